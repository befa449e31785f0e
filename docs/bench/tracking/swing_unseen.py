"""The fast head swing on a face no tracker setting was tuned on (Grace Hopper): alignment error at crop 256, mean /
max, of real MediaPipe with the face mesh on every k-th frame, for swings of 18, 27 and 36 px/frame at their fastest.

    python docs/bench/tracking/swing_unseen.py
"""

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.metrics import alignment_error
from realtime.io import stills
from realtime.vision.tracking import FaceTracker, TrackerConfig


def main() -> None:
    still = stills.load_still("grace_hopper")
    print("peak px/frame | k | alignment error px at 256, mean / max")
    with tempfile.TemporaryDirectory() as tmp:
        for period in (60, 40, 30):
            clip = stills.make_clip(Path(tmp) / f"swing{period}.mp4",
                                    stills.swing_motion(90, period=period, centre=still.centre), still=still)
            truth = stills.true_quads(clip.matrices, still)
            for k in (1, 2, 3):
                with FaceTracker(TrackerConfig(mesh_every=k)) as tracker:
                    quads = np.stack([np.asarray(tracker.track(f).quad, np.float64) for f in clip.as_frames()])
                err = alignment_error(quads, truth, 256)
                print(f"{170 * 2 * np.pi / period:.0f} | {k} | {err.mean():.2f} / {err.max():.2f}", flush=True)


if __name__ == "__main__":
    main()
