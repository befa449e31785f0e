"""Stage times of the first face frame of a live transfer stream, with and without the render face mesh warmed up
before it (what ``FrameProcessor.prepare_stream`` does). One process, the frame processed on this thread.

    python docs/bench/composite-live/first_frame.py [--cold]
"""

import argparse
import time

from realtime.api import Filter, open_source
from realtime.pipeline.processor import StreamState
from realtime.vision.tracking import FaceTracker, TrackerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="skip prepare_stream: the mesh is built on the first frame")
    args = ap.parse_args()
    flt = Filter(edits={"smile": 1.5}, backend="onnx")
    state = StreamState(live=True)
    if not args.cold:
        flt.processor.prepare_stream(state)
    time.sleep(2.0)  # what the stream's start-up gives the warm-up
    with open_source("demo:?seconds=1&fps=30&size=640x480") as src, FaceTracker(TrackerConfig()) as tracker:
        frame = next(iter(src))
        track = tracker.track(frame)
    out = flt.processor.process(frame, track, state)
    print({k: round(v, 1) for k, v in out.timings_ms.items()})


if __name__ == "__main__":
    main()
