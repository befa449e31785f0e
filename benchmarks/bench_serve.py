"""Several WebRTC streams through one `stylestream serve`: aggregate and per-stream fps, frame latency, the server's
CPU, drops — optionally for several source trees side by side (a baseline checkout vs this one), interleaved.

    python -m benchmarks.bench_serve --clients 4 --size 640x480 --fps 30 --light --edit smile=1.5 \\
        --tree base=/path/to/main-checkout --tree new=. --rounds 2 --seconds 20 --out docs/bench/serve-4.json

Each run starts ``python -m realtime.cli serve --port 0 --device cpu …`` from the tree's folder (its own process,
importing that tree's code), connects ``--clients`` Python aiortc clients (realtime/server/client.py) from this
process, turns the edit on in each, waits ``--warmup`` seconds and measures ``--seconds``: frames received per client
(stamped frames give end-to-end latency: client send → server decode / track / filter / encode → client decode),
the server's CPU seconds (/proc) and this process's (the clients'). ``--light`` clients send pre-encoded H.264 and
read only the stamp back, so the clients leave the cores to the server. Trees alternate within each round, so load
on the shared machine hits them alike. JSON with provenance; a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np

from benchmarks.bench_live import start_server
from benchmarks.provenance import command_line, provenance, write_result
from models.bundle import DEFAULT_BUNDLE
from realtime.server import rtc_tuning
from realtime.server.client import LiveClient, clip_frames

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pct(a: list[float], p: float) -> float:
    return round(float(np.percentile(a, p)), 1) if a else float("nan")


async def measure(url: str, server_pid: int, clients: int, width: int, height: int, fps: float, seconds: float,
                  warmup: float, light: bool, edits: dict[str, float]) -> dict[str, Any]:
    rtc_tuning.apply(rtc_tuning.RtcTuning(fps=int(fps)))
    frames = clip_frames(width, height, count=30)
    peers = [LiveClient(url, frames, fps=fps, light=light) for _ in range(clients)]
    try:
        for p in peers:
            await p.connect(timeout=60)
            for name, value in edits.items():
                p.send({"type": "edit", "name": name, "value": value})
        await asyncio.gather(*(p.wait_frames(5, timeout=60) for p in peers))
        await asyncio.sleep(warmup)
        t0 = time.monotonic()
        marks = [(len(p.recv_times), len(p.latency_ms)) for p in peers]
        cpu_s0, cpu_c0 = cpu_seconds(server_pid), own_cpu_seconds()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - t0
        cpu_s, cpu_c = cpu_seconds(server_pid) - cpu_s0, own_cpu_seconds() - cpu_c0
        per, lat_all = [], []
        for p, (n0, l0) in zip(peers, marks):
            lat = p.latency_ms[l0:]
            lat_all += lat
            per.append({"fps": round((len(p.recv_times) - n0) / wall, 2), "stamped": len(lat),
                        "latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99)}})
        with urllib.request.urlopen(url.rstrip("/") + "/stats", timeout=10) as r:
            stats = json.loads(r.read())
    finally:
        for p in peers:
            await p.close()
        rtc_tuning.restore()
    sessions = stats.get("sessions", [])
    drops: dict[str, int] = {}
    for s in sessions:
        for k, v in (s.get("drops") or {}).items():
            drops[k] = drops.get(k, 0) + int(v)
    fps_each = [c["fps"] for c in per]
    return {"clients": clients, "aggregate_fps": round(sum(fps_each), 2),
            "per_stream_fps": {"mean": round(float(np.mean(fps_each)), 2), "min": round(min(fps_each), 2)},
            "latency_ms": {"p50": _pct(lat_all, 50), "p99": _pct(lat_all, 99)},
            "server_cpu_cores": round(cpu_s / wall, 2), "clients_cpu_cores": round(cpu_c / wall, 2),
            "drops": drops, "per_client": per, "engine": stats.get("engine"),
            "stages_ms": [s.get("stages_ms") for s in sessions], "loop_lag_ms": stats.get("loop_lag_ms"),
            "seconds": round(wall, 2)}


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| tree | round | clients | aggregate fps | per-stream fps mean / min | latency p50 / p99 ms | "
           "server CPU (cores) | clients CPU (cores) | drops | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drops = ", ".join(f"{k} {v}" for k, v in r["drops"].items() if v) or "0"
        out.append(f"| {r['tree']} | {r['round']} | {r['clients']} | {r['aggregate_fps']:.1f} | "
                   f"{r['per_stream_fps']['mean']:.1f} / {r['per_stream_fps']['min']:.1f} | "
                   f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f} | {r['server_cpu_cores']:.2f} | "
                   f"{r['clients_cpu_cores']:.2f} | {drops} | {r['load_avg'][0]:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: built-in)")
    ap.add_argument("--clients", type=int, nargs="+", default=[4], help="stream counts to run")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate each client sends")
    ap.add_argument("--light", action="store_true", help="pre-encoded clients that only read the stamp back")
    ap.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH", help="edit on in every stream")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR[::SERVE ARGS]",
                    help="serve from this checkout, with these extra serve options (repeatable; default: this one)")
    ap.add_argument("--server-args", default="", help="extra `stylestream serve` options for every tree")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every (tree, clients) this often, interleaved")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None, help="write JSON here")
    args = ap.parse_args(argv)

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # loopback only
    w, h = (int(v) for v in args.size.lower().split("x"))
    edits = {k: float(v) for k, v in (e.split("=", 1) for e in args.edit)}
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(REPO)]]
    bundle = args.bundle or DEFAULT_BUNDLE
    rows, commands = [], {}
    for rnd in range(args.rounds):
        for clients in args.clients:
            for label, spec in trees:
                folder, _, own = spec.partition("::")
                extra = [*args.server_args.split(), *own.split(), "--max-sessions", str(max(4, clients))]
                proc, url, cmd = start_server(bundle, "h264", extra, cwd=Path(folder))
                commands[label] = f"(cd {folder} && python -m {' '.join(cmd[2:])})"
                load = [round(v, 2) for v in os.getloadavg()]
                try:
                    r = asyncio.run(measure(url, proc.pid, clients, w, h, args.fps, args.seconds, args.warmup,
                                            args.light, edits))
                finally:
                    proc.terminate()
                    try:
                        proc.wait(20)
                    except Exception:  # noqa: BLE001 - a server that does not stop is killed
                        proc.kill()
                r.update(tree=label, round=rnd + 1, load_avg=load)
                rows.append(r)
                print(f"{label} round {rnd + 1}, {clients} clients: {r['aggregate_fps']:.1f} fps aggregate, "
                      f"latency p50 {r['latency_ms']['p50']} ms, server {r['server_cpu_cores']} cores, "
                      f"load {load[0]}", file=sys.stderr, flush=True)
    report = {"provenance": {**provenance("cpu"), "command": command_line()}, "bundle": str(bundle),
              "size": args.size, "fps": args.fps, "light": args.light, "edits": edits, "server_commands": commands,
              "results": rows}
    write_result(args.out, report)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
