"""The test suite: one folder per layer of the code (models, vision, io, engines, export, pipeline, server,
training, benchmarks, cli) plus shared helpers (media, clips, official_formats) and fixtures (conftest)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout
