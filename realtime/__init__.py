"""stylestream's runtime: the frame pipeline, its I/O, the live server and the command line.

The public API (:mod:`realtime.api`) is re-exported here lazily (PEP 562), so ``from realtime import Filter`` works
while ``import realtime.vision`` (from training code, say) never loads the pipeline, the engines or the server::

    from realtime import Filter, FilterTrack, open_source, open_sink
"""

from __future__ import annotations

import importlib
from typing import Any

_API = ("Filter", "FilterResult", "FilterTrack", "load", "open_sink", "open_source")


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("realtime.api"), name)
    raise AttributeError(f"module 'realtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
