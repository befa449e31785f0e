"""The live page in a real Chromium (apt package ``chromium``): fake camera fed by a synthetic face clip (.y4m),
driven over the Chrome DevTools protocol (aiohttp websocket, no extra dependency).

The page connects, the remote video plays, the server reports faces found, and a screenshot is written to
``$STYLESTREAM_TEST_ARTIFACTS`` (default ``build/test-artifacts/``) as ``browser-live.png``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import cv2
import numpy as np
import pytest

from realtime.pipeline.calibration import CalibrationConfig
from realtime.server.client import clip_frames
from tests import REPO
from tests.server.test_server import serving, tiny_factories, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
    "--allow-loopback-in-peer-connection",  # ICE host candidates on 127.0.0.1 (nothing leaves the machine)
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain IP candidates instead of .local names
    "--window-size=1280,900",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("needs Chromium (apt install chromium)")


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """A raw YUV4MPEG2 (I420) clip, the format Chromium's fake camera reads (it loops it)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


class Cdp:
    """Just enough of the DevTools protocol: send a command, wait for its reply."""
    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        await self.ws.send_json({"id": i, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await self.ws.receive(timeout=max(0.05, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"devtools connection ended: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == i:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
        raise TimeoutError(method)

    async def evaluate(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("value")


async def devtools_page(user_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """The page target's websocket URL, from DevToolsActivePort (written once Chromium listens)."""
    port_file = user_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("chromium did not open its devtools port")
        await asyncio.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            await asyncio.sleep(0.2)
    raise TimeoutError("no page target")


def test_page_in_chromium_with_fake_camera(tmp_path, tiny_bundle_dir):
    exe = chromium()
    # the same tiny random bundle as the loopback tests, with a short calibration for the button
    factories = tiny_factories(tiny_bundle_dir, calibration=CalibrationConfig(frames=4, stride=1, iters=20))
    clip = tmp_path / "face.y4m"
    write_y4m(clip, clip_frames(320, 240, count=30), fps=15)
    artefacts = Path(os.environ.get("STYLESTREAM_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / "browser-live.png"
    original_hosts = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

    async def main() -> None:
        async with serving(factories) as (server, url):
            user_dir = tmp_path / "profile"
            proc = subprocess.Popen(
                [exe, *CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}", f"--user-data-dir={user_dir}",
                 "--remote-debugging-port=0", f"{url}/?autostart=1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                ws_url = await devtools_page(user_dir, proc)
                async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
                    cdp = Cdp(ws)
                    await cdp.call("Runtime.enable")
                    state: dict[str, Any] = {}
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        state = await cdp.evaluate("JSON.parse(JSON.stringify(window.stylestream || {}))") or {}
                        stats = state.get("lastStats") or {}
                        if (state.get("phase") == "connected" and state.get("remotePlaying")
                                and state.get("remoteFrames", 0) > 10 and stats.get("faces", 0) > 0):
                            break
                        if state.get("phase") == "failed":
                            break
                        await asyncio.sleep(0.5)
                    assert state.get("phase") == "connected", state
                    assert state.get("remotePlaying") and state.get("remoteFrames", 0) > 10, state
                    stats = state["lastStats"]
                    assert stats["faces"] > 0 and stats["fps_out"] > 0, stats
                    # the server agrees: one session whose tracker found the face
                    sessions = list(server.sessions.values())
                    assert len(sessions) == 1 and sessions[0].stats()["faces"] > 0
                    size = await cdp.evaluate("[document.getElementById('remote').videoWidth, "
                                              "document.getElementById('remote').videoHeight]")
                    assert size == [320, 240], size
                    # a page control goes over the data channel: side by side doubles the video's width
                    await cdp.evaluate("document.querySelector('input[name=view][value=side_by_side]').click()")
                    wide = None
                    for _ in range(40):
                        wide = await cdp.evaluate("document.getElementById('remote').videoWidth")
                        if wide == 640:
                            break
                        await asyncio.sleep(0.25)
                    assert wide == 640, wide
                    # the Calibrate button: the page shows the server's progress and then the result
                    await cdp.evaluate("document.getElementById('calibrate').click()")
                    text = ""
                    for _ in range(240):
                        text = await cdp.evaluate("document.getElementById('calibration-status').textContent")
                        if text.startswith("calibrated"):
                            break
                        await asyncio.sleep(0.25)
                    assert text.startswith("calibrated:") and "dB" in text, text
                    png = await cdp.call("Page.captureScreenshot", format="png")
                    shot.write_bytes(base64.b64decode(png["data"]))
                    await cdp.evaluate("document.getElementById('stop').click()")
                assert await wait_until(lambda: not server.sessions, 10), "session not freed after Stop"
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)

    try:
        asyncio.run(main())
    finally:
        aioice.ice.get_host_addresses = original_hosts
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] > 200 and img.std() > 5, "blank screenshot"
