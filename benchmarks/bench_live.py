"""Loopback WebRTC figures for `stylestream serve`: end-to-end fps and frame latency per resolution/codec.

    .venv/bin/python -m benchmarks.bench_live [--bundle DIR | --tiny] [--sizes 640x480,1280x720] [--fps 30]
        [--codec h264] [--seconds 10] [--out docs/bench/live-cpu.json]

Starts `stylestream serve --port 0` as a subprocess (its own process, like in production), connects one
Python aiortc client (realtime/server/client.py) that sends the synthetic ``demo:`` face clip with frame numbers
stamped in a corner, and reads them back from the processed video: **end-to-end latency** = client capture →
client encode → server decode/track/filter/encode → client decode. The server's own stats (per-stage ms, server
latency receive→send, encoder and its ms, drops) come over the data channel. Writes JSON (with provenance) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
import torch

from benchmarks.provenance import command_line, provenance, write_result
from models.bundle import DEFAULT_BUNDLE, new_bundle
from models.editing import EditSpec, tensor_key
from realtime.server import rtc_tuning
from realtime.server.client import LiveClient, clip_frames
from realtime.vision.mediapipe_runtime import install_native_stderr_filter

REPO = Path(__file__).resolve().parents[1]


def tiny_bundle(path: Path) -> Path:
    b = new_bundle("tiny-64", "tiny", seed=0)
    torch.nn.init.normal_(b.fren.head[2].weight, std=0.02)
    torch.nn.init.normal_(b.vien.head[2].weight, std=0.02)
    b.extra[tensor_key("brighter")] = torch.randn(b.generator.w_dim)
    b.edits.append(EditSpec("brighter", "w_direction", "random direction").to_dict())
    b.save(path)
    return path


def start_server(bundle: Path, codec: str, extra: list[str], cwd: Path = REPO
                 ) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`stylestream serve --port 0` as a subprocess run from ``cwd`` (a checkout: its code is imported); returns
    (process, URL, command) once it listens."""
    cmd = [sys.executable, "-m", "realtime.cli", "serve", "--port", "0", "--bundle", str(bundle), "--codec", codec,
           "--device", "cpu", *extra]
    proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"server exited ({proc.poll()})")
        m = re.search(r"open (http://\S+)", line)
        if m:
            # keep reading its stderr (the last lines kept), or a chatty server would block on a full pipe
            proc.log_tail = collections.deque(maxlen=200)  # type: ignore[attr-defined]
            threading.Thread(target=lambda: proc.log_tail.extend(proc.stderr), daemon=True).start()  # type: ignore
            return proc, m.group(1), cmd
    proc.kill()
    raise TimeoutError("server did not start")


async def measure(url: str, width: int, height: int, fps: float, seconds: float, warmup: float,
                  passthrough: bool = False) -> dict[str, Any]:
    rtc_tuning.apply(rtc_tuning.RtcTuning(fps=int(fps)))  # the client sends like a browser would (60 fps allowed)
    client = LiveClient(url, clip_frames(width, height, count=30), fps=fps)
    await client.connect(timeout=60)
    try:
        if passthrough:  # filter off: no tracking, no model — the transport's own ceiling
            client.send({"type": "filter", "on": False})
        await client.wait_frames(5, timeout=60)
        await asyncio.sleep(warmup)
        t0 = time.monotonic()
        n0 = len(client.latency_ms)
        await asyncio.sleep(seconds)
        summary = client.summary(since=t0)
        lat = client.latency_ms[n0:]
        a = np.asarray(lat) if lat else np.asarray([np.nan])
        summary["latency_ms"] = {"p50": round(float(np.percentile(a, 50)), 1),
                                 "p90": round(float(np.percentile(a, 90)), 1), "mean": round(float(a.mean()), 1)}
        summary["server"] = client.stats
        summary["sent_fps"] = fps
        return summary
    finally:
        await client.close()


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| size | sent fps | received fps | e2e latency p50 / p90 ms | server latency ms | encoder (ms) | "
           "server stages ms | drops | loop lag p99 ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.get("server") or {}
        enc = s.get("encoder") or {}
        stages = ", ".join(f"{k} {v:.1f}" for k, v in (s.get("stages_ms") or {}).items())
        drops = ", ".join(f"{k} {v}" for k, v in (s.get("drops") or {}).items())
        out.append(f"| {r['size']} | {r['sent_fps']:g} | {r['fps']:.1f} | {r['latency_ms']['p50']:.0f} / "
                   f"{r['latency_ms']['p90']:.0f} | {(s.get('latency_ms') or {}).get('mean', float('nan'))} | "
                   f"{enc.get('encoder', '?')} ({enc.get('encode_ms', 0):.1f}) | {stages} | {drops} | "
                   f"{(s.get('loop_lag_ms') or {}).get('p99', '?')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: built-in)")
    ap.add_argument("--tiny", action="store_true", help="use a tiny random bundle (no trained weights needed)")
    ap.add_argument("--sizes", default="640x480,1280x720")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate the client sends")
    ap.add_argument("--codec", default="h264", choices=["h264", "vp8"])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per size")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--passthrough", action="store_true", help="filter off (transport only: decode, convert, encode)")
    ap.add_argument("--server-args", default="", help="extra `stylestream serve` options, e.g. '--backend onnx'")
    ap.add_argument("--out", type=Path, default=None, help="write JSON here")
    args = ap.parse_args(argv)

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # loopback only (this process)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or DEFAULT_BUNDLE
        label = str(bundle)
        if args.tiny or not bundle.exists():
            bundle = tiny_bundle(Path(tmp) / "tiny")
            label = "tiny random (tiny-64 generator, tiny FrEN/ViEN, untrained)"
        rows = []
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            proc, url, cmd = start_server(bundle, args.codec, args.server_args.split())
            try:
                r = asyncio.run(measure(url, w, h, args.fps, args.seconds, args.warmup, args.passthrough))
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            r["size"] = size
            rows.append(r)
            print(f"{size}: {r['fps']:.1f} fps, e2e latency p50 {r['latency_ms']['p50']:.0f} ms", file=sys.stderr)
    report = {"provenance": {**provenance("cpu"), "command": command_line()},
              "bundle": label,
              "server_command": " ".join(cmd[2:]), "codec": args.codec, "passthrough": args.passthrough,
              "sent_fps": args.fps, "results": rows}
    text = json.dumps(report, indent=2, default=str)
    write_result(args.out, text + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    install_native_stderr_filter()  # MediaPipe's start-up lines, as the CLI does
    sys.exit(main())
