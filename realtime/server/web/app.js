// stylestream live page: webcam → WebRTC → server filter → processed video back; controls and stats on a
// data channel. No framework. Server data is only ever written with textContent.
"use strict";

const $ = (id) => document.getElementById(id);

// Read by the browser test (tests/test_browser.py) and handy in the console.
const state = {
  phase: "idle", // idle | connecting | connected | failed | closed
  mode: null,
  remotePlaying: false,
  remoteFrames: 0,
  lastStats: null,
  error: null,
  session: null,
  calibration: null, // the server's calibration status (stats.calibration)
};
window.stylestream = state;

let config = null;
let pc = null;
let channel = null;
let camera = null; // MediaStream
let token = new URLSearchParams(location.search).get("token") || sessionStorage.getItem("stylestream-token") || "";
const editValues = new Map();

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + kind;
}

function headers(extra = {}) {
  return token ? { ...extra, "X-Stylestream-Token": token } : extra;
}

async function loadConfig() {
  const r = await fetch("config", { headers: headers() });
  if (r.status === 401) {
    $("token-form").hidden = false;
    setStatus("this server needs a token", "warn");
    return false;
  }
  if (!r.ok) throw new Error(`/config → ${r.status}`);
  config = await r.json();
  state.mode = config.mode;
  $("mode").textContent = config.mode === "viewer" ? "viewer" : "camera";
  $("local-figure").hidden = config.mode === "viewer";
  $("capture").disabled = config.mode === "viewer";
  buildEdits(config.edits || []);
  $("start").disabled = false;
  setStatus(config.mode === "viewer" ? "ready: press Start to watch the broadcast" : "ready: press Start to use your camera");
  return true;
}

function buildEdits(specs) {
  const box = $("edits");
  box.replaceChildren();
  for (const s of specs) {
    const label = document.createElement("label");
    label.className = "edit";
    label.title = s.description || "";
    const name = document.createElement("span");
    name.textContent = s.name;
    const input = document.createElement("input");
    input.type = "range";
    input.min = String(s.min);
    input.max = String(s.max);
    input.step = String((s.max - s.min) / 100);
    input.value = String(s.default);
    input.dataset.name = s.name;
    input.dataset.default = String(s.default);
    const out = document.createElement("output");
    out.textContent = Number(s.default).toFixed(2);
    input.addEventListener("input", () => {
      out.textContent = Number(input.value).toFixed(2);
      editValues.set(s.name, Number(input.value));
      scheduleEdits();
    });
    label.append(name, input, out);
    box.append(label);
  }
}

let editsPending = false;
function scheduleEdits() {
  if (editsPending) return;
  editsPending = true;
  requestAnimationFrame(() => {
    editsPending = false;
    for (const [name, value] of editValues) send({ type: "edit", name, value });
    editValues.clear();
  });
}

function send(msg) {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify(msg));
}

function captureSize() {
  const [w, h] = $("resolution").value.split("x").map(Number);
  return { width: w, height: h, fps: Number($("fps").value) };
}

async function openCamera() {
  const { width, height, fps } = captureSize();
  camera = await navigator.mediaDevices.getUserMedia({
    audio: false,
    video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: fps } },
  });
  $("local").srcObject = camera;
}

function waitIceGathering(peer, ms = 3000) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (peer.iceGatheringState === "complete") {
        peer.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms); // host candidates are enough on a LAN; don't wait forever for STUN
  });
}

async function start() {
  $("start").disabled = true;
  state.phase = "connecting";
  state.error = null;
  setStatus("connecting…");
  try {
    if (config.mode !== "viewer") await openCamera();
    pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
    channel = pc.createDataChannel("control");
    channel.onopen = () => {
      $("controls").disabled = false;
      $("calibration").disabled = false;
      if (config.mode !== "viewer") send({ type: "request", ...captureSize() });
    };
    channel.onmessage = (e) => onMessage(e.data);
    pc.ontrack = (e) => {
      const video = $("remote");
      video.srcObject = e.streams[0] || new MediaStream([e.track]);
      video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      const s = pc ? pc.connectionState : "closed";
      if (s === "connected") {
        state.phase = "connected";
        setStatus("connected", "ok");
      } else if (s === "failed" || s === "closed") {
        state.phase = s;
        setStatus(`connection ${s}`, "bad");
        stop(false);
      }
    };
    if (config.mode === "viewer") {
      pc.addTransceiver("video", { direction: "recvonly" });
    } else {
      const track = camera.getVideoTracks()[0];
      const sender = pc.addTrack(track, camera);
      await allowHighRate(sender);
    }
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    const r = await fetch("offer", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(answer.error || `HTTP ${r.status}`);
    state.session = answer.session;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    $("stop").disabled = false;
  } catch (err) {
    state.phase = "failed";
    state.error = String(err && err.message ? err.message : err);
    setStatus(`could not start: ${state.error}`, "bad");
    stop(false);
  }
}

async function allowHighRate(sender) {
  // Let the browser send 60 fps and a few Mbps (its defaults are lower for a new connection).
  try {
    const p = sender.getParameters();
    if (!p.encodings || !p.encodings.length) p.encodings = [{}];
    p.encodings[0].maxFramerate = Number($("fps").value);
    p.encodings[0].maxBitrate = 8_000_000;
    await sender.setParameters(p);
  } catch (_) {
    /* older browsers: defaults */
  }
}

function stop(sayBye = true) {
  if (sayBye) send({ type: "bye" });
  if (pc) pc.close();
  pc = null;
  channel = null;
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
  $("remote").srcObject = null;
  $("local").srcObject = null;
  state.remotePlaying = false;
  if (state.phase === "connected" || state.phase === "connecting") state.phase = "closed";
  $("controls").disabled = true;
  $("calibration").disabled = true;
  $("stop").disabled = true;
  $("start").disabled = !config;
  if (sayBye) setStatus("stopped");
}

function onMessage(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch (_) {
    return;
  }
  if (msg.type === "stats") {
    state.lastStats = msg;
    showStats(msg);
    showCalibration(msg.calibration);
  } else if (msg.type === "hello") {
    if (Array.isArray(msg.edits)) buildEdits(msg.edits);
    const mode = document.querySelector(`input[name="composite"][value="${msg.composite}"]`);
    if (mode) mode.checked = true;
  } else if (msg.type === "pong" && typeof msg.t === "number") {
    rtt = performance.now() - msg.t;
  } else if (msg.type === "error") {
    setStatus(`server: ${msg.message}`, "warn");
  }
}

let rtt = null;
setInterval(() => send({ type: "ping", t: performance.now() }), 2000);

function fmt(v, digits = 1) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–";
}

function showStats(s) {
  const rows = [
    ["fps in / out", `${fmt(s.fps_in)} / ${fmt(s.fps_out)}`],
    ["server latency", s.latency_ms ? `${fmt(s.latency_ms.mean, 0)} ms (p90 ${fmt(s.latency_ms.p90, 0)})` : "–"],
    ["data-channel RTT", rtt === null ? "–" : `${fmt(rtt, 0)} ms`],
    ["server loop lag", s.loop_lag_ms && s.loop_lag_ms.p99 !== undefined ? `${fmt(s.loop_lag_ms.p99)} ms (p99)` : "–"],
    ["face", s.face ? "found" : "none"],
    ["faces (frames)", String(s.faces ?? "–")],
    ["latent encoder", `${s.latent ?? "–"} (key frames ${s.key_frames ?? "–"})`],
    ["face composite", s.composite ? `${s.composite.now ?? "–"} (${s.composite.mode})` : "–"],
    ["video encoder", s.encoder ? `${s.encoder.encoder} ${s.encoder.width}×${s.encoder.height}, ` +
      `${fmt(s.encoder.bitrate / 1e6, 2)} Mbps, ${fmt(s.encoder.encode_ms)} ms` : "–"],
    ["size in → out", s.in_size ? `${s.in_size.join("×")} → ${(s.out_size || []).join("×")}` : "–"],
    ["drops", s.drops ? Object.entries(s.drops).map(([k, v]) => `${k} ${v}`).join(", ") : "–"],
  ];
  for (const [k, v] of Object.entries(s.stages_ms || {})) rows.push([`${k} ms`, fmt(v)]);
  if (s.error) rows.push(["error", s.error]);
  const body = $("stats").tBodies[0];
  body.replaceChildren(
    ...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = k;
      td.textContent = v;
      tr.append(th, td);
      return tr;
    }),
  );
}

const CALIBRATION_TEXT = {
  idle: () => "not calibrated",
  recording: (c) => `recording your face… ${c.recorded ?? 0}/${c.frames ?? "?"} (look around, talk)`,
  adapting: (c) => `adapting the generator… ${Math.round(100 * (c.progress || 0))}% (the filter keeps running)`,
  building: () => "preparing the calibrated model…",
  ready: () => "switching…",
  active: (c) => {
    const p = c.psnr || {};
    const sec = c.seconds || {};
    const total = Object.values(sec).reduce((a, b) => a + b, 0);
    const held = p.heldout_before === undefined ? "" :
      ` (${fmt(p.heldout_before)} → ${fmt(p.heldout_after)} dB on frames it did not train on)`;
    return `calibrated: ${fmt(p.before)} → ${fmt(p.after)} dB on your frames${held}, in ${fmt(total, 0)} s`;
  },
  failed: (c) => `calibration failed: ${c.error || "unknown error"}`,
};

function showCalibration(c) {
  if (!c) return;
  const busy = ["recording", "adapting", "building", "ready"].includes(c.state);
  const text = (CALIBRATION_TEXT[c.state] || (() => c.state))(c);
  const el = $("calibration-status");
  el.textContent = text;
  el.className = "status " + (c.state === "active" ? "ok" : c.state === "failed" ? "bad" : "");
  $("calibrate").disabled = busy;
  $("calibrate").textContent = c.state === "active" ? "Calibrate again" : "Calibrate";
  $("calibrate-reset").disabled = c.state === "idle";
  state.calibration = c;
}

function watchRemote() {
  const video = $("remote");
  const tick = () => {
    state.remoteFrames += 1;
    state.remotePlaying = video.videoWidth > 0 && !video.paused;
    $("remote-info").textContent = `${video.videoWidth}×${video.videoHeight}`;
    video.requestVideoFrameCallback(tick);
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    video.requestVideoFrameCallback(tick);
  } else {
    video.addEventListener("timeupdate", () => {
      state.remoteFrames += 1;
      state.remotePlaying = video.videoWidth > 0 && !video.paused;
    });
  }
  $("local").addEventListener("loadedmetadata", () => {
    const v = $("local");
    $("local-info").textContent = `${v.videoWidth}×${v.videoHeight}`;
  });
}

function wireControls() {
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => stop(true));
  $("filter").addEventListener("change", (e) => send({ type: "filter", on: e.target.checked }));
  for (const r of document.querySelectorAll('input[name="view"]')) {
    r.addEventListener("change", (e) => send({ type: "view", mode: e.target.value }));
  }
  for (const r of document.querySelectorAll('input[name="composite"]')) {
    r.addEventListener("change", (e) => send({ type: "composite", mode: e.target.value }));
  }
  $("calibrate").addEventListener("click", () => send({ type: "calibrate", action: "start" }));
  $("calibrate-reset").addEventListener("click", () => send({ type: "calibrate", action: "reset" }));
  $("reset-edits").addEventListener("click", () => {
    for (const input of $("edits").querySelectorAll("input[type=range]")) {
      input.value = input.dataset.default;
      input.dispatchEvent(new Event("input"));
    }
  });
  const recapture = async () => {
    const want = captureSize();
    send({ type: "request", ...want });
    if (camera) {
      const track = camera.getVideoTracks()[0];
      try {
        await track.applyConstraints({ width: { ideal: want.width }, height: { ideal: want.height },
          frameRate: { ideal: want.fps } });
      } catch (err) {
        setStatus(`camera: ${err.message || err}`, "warn");
      }
      if (pc) {
        const sender = pc.getSenders().find((s) => s.track === track);
        if (sender) await allowHighRate(sender);
      }
    }
  };
  $("resolution").addEventListener("change", recapture);
  $("fps").addEventListener("change", recapture);
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    token = $("token").value;
    sessionStorage.setItem("stylestream-token", token);
    $("token-form").hidden = true;
    await init();
  });
  window.addEventListener("pagehide", () => send({ type: "bye" }));
}

async function init() {
  try {
    if (await loadConfig() && new URLSearchParams(location.search).has("autostart")) await start();
  } catch (err) {
    state.phase = "failed";
    state.error = String(err.message || err);
    setStatus(`cannot reach the server: ${state.error}`, "bad");
  }
}

wireControls();
watchRemote();
init();
