"""`stylestream serve-models [BUNDLE]`: a Triton Inference Server hosting a bundle's networks, for
`serve|run|camera --backend triton --triton-url URL` (docs/scale.md, docs/triton.md).

It writes the Python-backend repository (ONNX Runtime inside Triton, dynamic batching; export/triton_python.py) and
starts the ``tritonserver`` found by realtime/engines/triton_server.py on the chosen host and ports, prints the URL
and serves until Ctrl-C / SIGTERM (or until the server dies: exit 1 with its last error line).
``--serve-repository DIR`` serves an existing repository as it is — e.g. ``stylestream export --to triton``'s
ONNX Runtime / TensorRT one, which needs NVIDIA's image (this wheel's server says which backend it lacks).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from models.errors import UserError
from realtime.api import load
from realtime.cli.options import add_config, changed_fields, config_from_args
from realtime.engines.triton_server import ModelServerConfig, TritonServer, find_tritonserver, serve_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", nargs="?", type=Path, default=None, help="bundle folder (default: the built-in bundle)")
    add_config(p.add_argument_group("model server"), ModelServerConfig)
    p.add_argument("--repository", type=Path, default=None, metavar="DIR",
                   help="write the model repository here and keep it (default: a temporary folder)")
    p.add_argument("--serve-repository", type=Path, default=None, metavar="DIR",
                   help="serve this existing Triton repository unchanged instead of writing one from BUNDLE")


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(ModelServerConfig, args)
    if args.serve_repository is not None:
        if args.bundle is not None or args.repository is not None:
            raise UserError("--serve-repository serves a repository as it is: give no BUNDLE and no --repository")
        tuned = [f"--{n.replace('_', '-')}" for n in ("max_batch", "queue_delay_us", "instances", "threads")
                 if n in changed_fields(cfg)]
        if tuned:
            raise UserError(f"{', '.join(tuned)} shape the repository this command writes; --serve-repository "
                            "serves its config.pbtxt files as they are")
    find_tritonserver()  # before minutes of export: a missing server is one line now
    stop = threading.Event()

    def say(msg: str) -> None:
        print(f"stylestream serve-models: {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="stylestream-models-") as tmp:
        if args.serve_repository is not None:
            what = str(args.serve_repository)
            server = TritonServer(args.serve_repository, host=cfg.host, http_port=cfg.http_port,
                                  grpc_port=cfg.grpc_port)
        else:
            bundle = load(args.bundle)
            what = f"bundle {bundle.name!r}"
            repo = args.repository if args.repository is not None else Path(tmp) / "repository"
            server = serve_bundle(bundle, repo, cfg, progress=say)
        try:
            say(f"starting tritonserver ({server.install.binary}) for {what}")
            server.start()
            for sig in (signal.SIGINT, signal.SIGTERM):  # from here on a signal stops the server (until now: the
                signal.signal(sig, lambda *_: stop.set())  # CLI's KeyboardInterrupt, and the finally below)
            say(f"ready at {server.http_url} (gRPC {server.grpc_url}) after {server.startup_s:.1f} s; use "
                f"--backend triton --triton-url {server.http_url} (Ctrl-C stops)")
            while not stop.wait(0.5):
                code = server.proc.poll() if server.proc is not None else None
                if code is not None:
                    lines = [ln for ln in server.log_text().splitlines() if ln.strip()]
                    raise UserError(f"tritonserver exited ({code}): {lines[-1][:300] if lines else 'no output'}")
        finally:
            server.close()
    say("stopped")
    return 0
