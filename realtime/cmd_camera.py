"""`stylestream camera`: the filter on a live source (webcam, network stream) into a virtual camera or a URL."""

from __future__ import annotations

import argparse

from models.errors import UserError

from .cmd_run import add_pipeline_options, run_pipeline


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="/dev/video0", help="/dev/videoN, rtmp/rtsp/srt/http URL or demo: "
                                                            "(default /dev/video0)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--virtual-camera", action="store_true",
                     help="send to a virtual camera (v4l2loopback on Linux, OBS on Windows/macOS); see README")
    out.add_argument("-o", "--output", help="rtmp:// URL, a file, virtualcam:DEVICE or null:")
    p.add_argument("--size", default=None, help="capture size WxH for /dev/videoN (e.g. 1280x720)")
    p.add_argument("--fps", type=float, default=None, help="capture frame rate for /dev/videoN")
    add_pipeline_options(p)


def main(args: argparse.Namespace) -> int:
    args.input = args.source
    if args.virtual_camera:
        args.output = "virtualcam:"
    if not args.output:
        raise UserError("choose an output: --virtual-camera or -o rtmp://…|file|null:")
    opts = {}
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UserError(f"--size expects WxH, got {args.size!r}") from None
        opts["size"] = (w, h)
    if args.fps:
        opts["fps"] = args.fps
    return run_pipeline(args, live_default=True, progress=False, source_options=opts)
