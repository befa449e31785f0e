"""The frame pipeline (DESIGN §2): one processor per stream, one stage runner for every way a stream is fed.

* :mod:`~realtime.pipeline.config` — :class:`PipelineConfig`, the views.
* :mod:`~realtime.pipeline.stages` — timings, bounded queues, run statistics, the look-ahead quad smoother.
* :mod:`~realtime.pipeline.latents` — the latent policy (FrEN key frames, ViEN reuse, fine-layer blending).
* :mod:`~realtime.pipeline.processor` — :class:`FrameProcessor`: one frame, align → encode → edit → generate →
  composite, with typed hand-offs; :class:`StreamState`.
* :mod:`~realtime.pipeline.runner` — :class:`StageRunner` (tracking thread → device thread) and :class:`Pipeline`
  (source → runner → sink).
* :mod:`~realtime.pipeline.calibration` — live calibration (record → adapt in a worker process → swap).
* :mod:`~realtime.pipeline.offline` — the offline editor as named, resumable phases.
"""

from realtime.pipeline.config import COMPOSITES, VIEWS, PipelineConfig
from realtime.pipeline.latents import LatentPolicy, LatentState
from realtime.pipeline.processor import Edited, FrameProcessor, StreamState
from realtime.pipeline.runner import Pipeline, StageRunner
from realtime.pipeline.stages import CLOSED, LookaheadSmoother, RunStats, StageQueue, StageTimes

__all__ = ["CLOSED", "COMPOSITES", "VIEWS", "Edited", "FrameProcessor", "LatentPolicy", "LatentState",
           "LookaheadSmoother", "Pipeline", "PipelineConfig", "RunStats", "StageQueue", "StageRunner", "StageTimes",
           "StreamState"]
