"""Benchmark front ends produce JSON with provenance, and the report turns it into docs."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_calibrate, bench_models, bench_streams, report
from models.bundle import DEFAULT_BUNDLE


def test_bench_models_json_and_speed_report(tmp_path):
    docs = tmp_path / "docs"
    out = docs / "bench" / "models-cpu.json"
    assert bench_models.main(["--generator", "tiny-64", "--encoder", "tiny", "--iters", "2", "--warmup", "1",
                              "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["provenance"]["device"] == "cpu" and "torch" in d["provenance"] and "load_avg" in d["provenance"]
    rows = {(r["model"], r["config"]) for r in d["results"]}
    assert rows == {("generator", "tiny-64"), ("FrEN", "tiny"), ("ViEN", "tiny")}
    assert all(r["median_ms"] > 0 and r["n"] >= 2 for r in d["results"])
    text = report.build(docs)
    assert "| generator | tiny-64 | 64 |" in text and "Command: `" in text
    assert "Not measured on CUDA yet" in text and "Whole pipeline, CPU" in text


@pytest.mark.slow
def test_bench_calibrate_timeline_reaches_the_swap(tmp_path):
    """A short live run with a tiny calibration: the swap happens, frames flow before, during and after."""
    if not (DEFAULT_BUNDLE / "bundle.json").exists():
        pytest.skip("default bundle missing")
    out = tmp_path / "docs" / "bench" / "calibrate-cpu.json"
    assert bench_calibrate.main(["--input", "demo:portrait?fps=15&size=320x240&seed=5", "--seconds", "14",
                                 "--warmup", "1", "--frames", "4", "--iters", "5", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    tl = d["timeline"]
    assert tl["time_to_active_s"] is not None and tl["calibration"]["state"] == "active", tl["events_s"]
    assert tl["phases"]["before"]["frames"] > 0 and tl["phases"]["calibrating"]["frames"] > 0
    assert tl["phases"]["after"]["frames"] > 0
    assert {"record", "start", "adapt"} <= set(tl["calibration"]["seconds"])
    assert "Live calibration" in report.build(tmp_path / "docs")


@pytest.mark.slow
def test_bench_streams_json_plot_and_batching_merges_calls(tmp_path):
    """`stylestream bench streams` on a random bundle (with its W-direction smile): every mode and stream count is
    a row, the batched mode merged calls at 3 streams, the plot is written."""
    out, png = tmp_path / "streams.json", tmp_path / "streams.png"
    assert bench_streams.main(["--streams", "1,3", "--modes", "serial,batched", "--bundles", "tiny-64",
                               "--seconds", "2", "--warmup", "1", "--fps", "40", "--size", "320x240",
                               "--json", str(out), "--plot", str(png)]) == 0
    d = json.loads(out.read_text())
    assert "load_avg" in d["provenance"] and d["command"]
    rows = {(r["mode"], r["streams"]): r for r in d["rows"]}
    assert set(rows) == {("serial", 1), ("batched", 1), ("serial", 3), ("batched", 3)}
    for r in rows.values():
        assert r["aggregate_fps"] > 0 and r["latency_ms"]["p50"] > 0 and r["errors"] == 0
    serial, batched = rows[("serial", 3)], rows[("batched", 3)]
    assert serial["stream_calls"] == serial["engine_executions"]
    assert batched["engine_executions"] < batched["stream_calls"]  # three streams' calls merged
    assert max(int(b) for h in batched["rows_per_execution"].values() for b in h) > 1
    assert png.stat().st_size > 10_000
