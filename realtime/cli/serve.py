"""`stylestream serve`: the live WebRTC server with its browser page (realtime/server/app.py, docs/live.md)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from typing import Any

from models.errors import UserError
from realtime.cli.run import (
    add_calibration_options,
    add_pipeline_options,
    build_processor,
    load_bundle_arg,
    print_edits,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from realtime.server.app import ServeConfig
    from realtime.server.rtc_tuning import RtcTuning

    d, t = ServeConfig(), RtcTuning()
    s = p.add_argument_group("server")
    s.add_argument("--host", default=d.host, help=f"interface to bind (default {d.host}; others need --token)")
    s.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port}; 0 = any free port)")
    s.add_argument("--token", default=None, help="shared secret the page must send (required off loopback)")
    s.add_argument("--ice-server", dest="ice_servers", action="append", default=[], metavar="URL",
                   help="STUN/TURN server, repeatable: stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT] "
                        "(default: none, host candidates only)")
    s.add_argument("--max-sessions", type=int, default=d.max_sessions,
                   help=f"concurrent peers; more get HTTP 503 (default {d.max_sessions})")
    s.add_argument("--source", default=None,
                   help="viewer mode: process this rtmp://…|file|demo: source once and broadcast it to every viewer")
    s.add_argument("--tls-cert", default=None,
                   help="PEM certificate: serve HTTPS (browsers allow the camera only on https or localhost)")
    s.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    s.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s,
                   help=f"close peers not connected after this many seconds (default {d.connect_timeout_s:g})")
    v = p.add_argument_group("video (aiortc overrides, see realtime/server/rtc_tuning.py)")
    v.add_argument("--codec", choices=["h264", "vp8"], default=t.codec, help=f"preferred codec (default {t.codec})")
    v.add_argument("--h264-encoder", choices=["auto", "h264_nvenc", "libx264"], default=t.h264_encoder,
                   help="H.264 encoder: auto = h264_nvenc when it opens, else libx264")
    v.add_argument("--fps", type=int, default=t.fps, help=f"encoder frame rate (default {t.fps}; aiortc: 30)")
    v.add_argument("--max-bitrate", type=float, default=t.max_bitrate / 1e6,
                   help=f"Mbps ceiling (default {t.max_bitrate / 1e6:g})")
    v.add_argument("--x264-preset", default=t.x264_preset, help=f"libx264 preset (default {t.x264_preset})")
    add_pipeline_options(p)
    add_calibration_options(p)


def _config(args: argparse.Namespace) -> Any:
    from realtime.server.app import ServeConfig, check_bind, parse_ice_server
    from realtime.server.rtc_tuning import RtcTuning

    check_bind(args.host, args.token)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if args.max_sessions < 1:
        raise UserError(f"--max-sessions must be ≥ 1, got {args.max_sessions}")
    if not 1 <= args.fps <= 240:
        raise UserError(f"--fps must be 1..240, got {args.fps}")
    if args.max_bitrate <= 0.3:
        raise UserError(f"--max-bitrate must be > 0.3 Mbps, got {args.max_bitrate:g}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together (PEM files)")
    for url in args.ice_servers:
        parse_ice_server(url)  # one clear error before anything starts
    tuning = RtcTuning(fps=args.fps, max_bitrate=int(args.max_bitrate * 1e6), codec=args.codec,
                       h264_encoder=args.h264_encoder, x264_preset=args.x264_preset)
    return ServeConfig(host=args.host, port=args.port, token=args.token, ice_servers=list(args.ice_servers),
                       max_sessions=args.max_sessions, source=args.source, connect_timeout_s=args.connect_timeout,
                       tuning=tuning, tls_cert=args.tls_cert, tls_key=args.tls_key)


def make_factories(processor: Any) -> tuple[Any, Any]:
    """(make_processor, make_tracker) for the server from one built processor: peers share its engine
    (serialised), copy its config and start from its edit strengths."""
    from models.editing import EditStack
    from realtime.engines import SerialEngine
    from realtime.pipeline import FrameProcessor
    from realtime.vision.tracking import FaceTracker, TrackerConfig

    engine = SerialEngine(processor.engine)
    base_edits = processor.edits

    def make_processor() -> FrameProcessor:
        edits = None  # every peer gets its own stack, so sliders never leak between peers
        if base_edits is not None:
            edits = EditStack(list(base_edits.specs.values()), base_edits.tensors, base_edits.style_channels)
            for name, value in base_edits.strengths().items():
                edits.set_strength(name, value)
        return FrameProcessor(engine, dataclasses.replace(processor.cfg), edits=edits,
                              calibration=processor.calibration_cfg)

    def make_tracker() -> Any:
        return FaceTracker(TrackerConfig(smoothing="one_euro", fps=30.0))

    return make_processor, make_tracker


def main(args: argparse.Namespace) -> int:
    from realtime.server.app import LiveServer, run_server

    config = _config(args)
    bundle = load_bundle_arg(args.bundle)
    if args.list_edits:
        return print_edits(bundle)
    processor = build_processor(args, bundle)
    make_processor, make_tracker = make_factories(processor)
    eng = processor.engine
    info = {"bundle": getattr(bundle, "name", ""), "engine": f"{eng.name} {eng.device} {eng.precision}"}
    specs = list(processor.edits.specs.values()) if processor.edits is not None else []
    server = LiveServer(config, make_processor, make_tracker, info=info, edit_specs=specs)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(url: str) -> None:
            shown = url + (f"?token={config.token}" if config.token else "")
            print(f"stylestream serve: {server.mode} mode, open {shown} (Ctrl-C stops)", file=sys.stderr)

        await run_server(server, ready=ready, stop=stop)

    try:
        asyncio.run(serve())
    finally:
        eng.close()
        if args.stats_json is not None:  # the last stats of every session (they are written when it closes)
            args.stats_json.parent.mkdir(parents=True, exist_ok=True)
            args.stats_json.write_text(json.dumps({"mode": server.mode, "bundle": info["bundle"],
                                                   "engine": info["engine"], "sessions": list(server.history)},
                                                  indent=2, default=str) + "\n")
    print("stylestream serve: stopped", file=sys.stderr)
    return 0
