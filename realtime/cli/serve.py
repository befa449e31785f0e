"""`stylestream serve`: the live WebRTC server with its browser page (realtime/server/, docs/live.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from models.errors import UserError
from realtime.cli.common import (
    add_calibration_options,
    add_filter_options,
    bundle_from_args,
    filter_from_args,
    print_edits,
)
from realtime.cli.options import add_config, config_from_args
from realtime.engines import BatchConfig, BatchingEngine
from realtime.server.app import (
    LiveServer,
    ServeConfig,
    check_bind,
    normalize_origin,
    parse_ice_server,
    run_server,
)
from realtime.server.rtc_tuning import RtcTuning
from realtime.server.worker import StreamsConfig, limit_op_threads
from realtime.vision.tracking import TrackerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p.add_argument_group("server"), ServeConfig)
    add_config(p.add_argument_group("video (aiortc overrides, see realtime/server/rtc_tuning.py)"), RtcTuning)
    add_filter_options(p)
    streams = p.add_argument_group("streams sharing the engine and the CPU")
    add_config(streams, BatchConfig)
    add_config(streams, StreamsConfig)
    add_calibration_options(p)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's config from the flags, checked before anything starts (one clear error)."""
    config = config_from_args(ServeConfig, args, tuning=config_from_args(RtcTuning, args))
    check_bind(config.host, config.token)
    if bool(config.tls_cert) != bool(config.tls_key):
        raise UserError("--tls-cert and --tls-key go together (PEM files)")
    for url in config.ice_servers:
        parse_ice_server(url)
    for origin in config.allowed_origins:
        normalize_origin(origin)
    return config


def main(args: argparse.Namespace) -> int:
    config = serve_config(args)
    bundle = bundle_from_args(args)
    if args.list_edits:
        return print_edits(bundle)
    streams = config_from_args(StreamsConfig, args)
    limit_op_threads(streams.op_threads)
    flt = filter_from_args(args, bundle, live=True, threads=streams.op_threads,
                           tracker=TrackerConfig(smoothing="one_euro", mesh_every=streams.mesh_every))
    make_processor, make_tracker = flt.stream_factories(config_from_args(BatchConfig, args))
    eng = flt.engine
    info = {"bundle": bundle.name, "engine": f"{eng.name} {eng.device} {eng.precision}", "composite": flt.composite}
    specs = list(flt.processor.edits.specs.values()) if flt.processor.edits is not None else []
    shared = flt.shared
    server = LiveServer(config, make_processor, make_tracker, info=info, edit_specs=specs,
                        engine_stats=shared.stats if isinstance(shared, BatchingEngine) else None)

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
        flt.close()
        if args.stats_json is not None:  # the last stats of every session (they are written when it closes)
            args.stats_json.parent.mkdir(parents=True, exist_ok=True)
            args.stats_json.write_text(json.dumps({"mode": server.mode, "bundle": info["bundle"],
                                                   "engine": info["engine"], "sessions": list(server.history)},
                                                  indent=2, default=str) + "\n")
    print("stylestream serve: stopped", file=sys.stderr)
    return 0
