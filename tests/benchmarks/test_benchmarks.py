"""Benchmark front ends produce JSON with provenance, and the report turns it into docs."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import (
    bench_calibrate,
    bench_fidelity,
    bench_models,
    bench_quality,
    bench_streams,
    bench_train_cost,
    report,
)
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
def test_bench_quality_measures_both_modes_on_an_unseen_face(tmp_path):
    """The quality bench on a short Grace Hopper clip: transfer without an edit returns the input bit for bit,
    regenerate does not; a transfer smile widens the mouth; keep_mouth on top of the smile is judged on the mouth's
    opening; the page and the pictures are written."""
    pytest.importorskip("mediapipe")
    out = tmp_path / "quality.json"
    assert bench_quality.main(["--frames", "8", "--edits", "smile,keep_mouth", "--no-cost", "--no-calibration",
                               "--json", str(out), "--docs", str(tmp_path / "docs")]) == 0
    d = json.loads(out.read_text())
    assert d["no_edit"]["transfer"]["identical_before_encoder"] is True
    assert d["no_edit"]["regenerate"]["identical_before_encoder"] is False
    rows = {(r["edit"], r["strength"], r["mode"]): r for r in d["edits"]}
    smile = rows[("smile", 3.0, "transfer")]
    assert smile["effect_measure"] == "mouth_width" and smile["effect"] > 0 and smile["psnr_off_target"] > 30
    keep = rows[("keep_mouth", 1.0, "regenerate")]
    assert keep["with"] == {"smile": 3.0} and keep["effect_measure"] == "mouth_open"
    page = (tmp_path / "docs" / "quality.md").read_text()
    assert "| keep_mouth | 1 | transfer | mouth_open (with smile 3); mouth " in page
    assert (tmp_path / "docs" / "img" / "quality_before_after.jpg").stat().st_size > 10_000
    assert (tmp_path / "docs" / "img" / "quality_keep_mouth.jpg").exists()
def test_bench_fidelity_coarse_mode_is_the_runtime_coarse_reuse(tiny_bundle):
    """The coarse modes reconstruct with the key encoder's coarse rows per frame and the last key frame's fine rows
    (what --reuse coarse runs), refreshing them every key_every frames in coarse+key."""
    b, c = tiny_bundle, tiny_bundle.generator.layout.num_coarse
    x = torch.rand(5, 3, b.crop_size, b.crop_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        key = b.fren(x)
        want = [torch.cat([key[t:t + 1, :c], key[k:k + 1, c:]], 1) for t, k in enumerate([0, 0, 0, 3, 3])]
        want = b.generator.synthesis(torch.cat(want)).clamp(-1, 1)
    got = bench_fidelity.reconstruct(b, x, "coarse", key_every=3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (bench_fidelity.reconstruct(b, x, "coarse")[4] - got[4]).abs().max() > 1e-3  # without refreshes
    assert {"coarse", "coarse+key"} <= set(bench_fidelity.MODES)


@pytest.mark.slow
def test_bench_train_cost_counts_the_trainers_step(tmp_path):
    """FLOPs of one --from-generator step, counted while the trainer's step runs: the generator dominates, the key
    encoder and ViEN are there, and the GPU estimate is the count over the assumed throughput."""
    out = tmp_path / "cost.json"
    assert bench_train_cost.main(["--generator", "tiny-64", "--key-encoder", "tiny", "--batch", "2", "--steps", "1",
                                  "--gpu-tflops", "50", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    parts = row["gflop_by_module"]
    assert row["gflop_per_step"] > 0 and {"SynthesisNetwork", "FrameEncoder", "VideoEncoder"} <= set(parts)
    assert max(parts, key=parts.get) == "SynthesisNetwork"
    assert sum(parts.values()) == pytest.approx(row["gflop_per_step"], rel=0.05)  # the networks account for the step
    (est,) = row["gpu_estimate"]
    assert est["s_per_step"] == pytest.approx(row["gflop_per_step"] * 1e9 / 50e12)
    assert row["cpu_s_per_step"] > 0
def test_bench_streams_json_plot_and_batching_merges_calls(tmp_path):
    """`stylestream bench streams` on a random bundle (with its W-direction smile): every mode and stream count is
    a row, the batched mode (a 20 ms window, as the streams are fed 7 ms apart; one merged call in flight) merged
    calls at 3 streams, the plot is written."""
    out, png = tmp_path / "streams.json", tmp_path / "streams.png"
    assert bench_streams.main(["--streams", "1,3", "--modes", "serial,batched:window=20:concurrency=1",
                               "--bundles", "tiny-64",
                               "--seconds", "2", "--warmup", "1", "--fps", "40", "--size", "320x240",
                               "--json", str(out), "--plot", str(png)]) == 0
    d = json.loads(out.read_text())
    assert "load_avg" in d["provenance"] and d["command"]
    rows = {(r["mode"].split(":")[0], r["streams"]): r for r in d["rows"]}
    assert set(rows) == {("serial", 1), ("batched", 1), ("serial", 3), ("batched", 3)}
    for r in rows.values():
        assert r["aggregate_fps"] > 0 and r["latency_ms"]["p50"] > 0 and r["errors"] == 0
    serial, batched = rows[("serial", 3)], rows[("batched", 3)]
    assert serial["stream_calls"] == serial["engine_executions"]
    assert batched["engine_executions"] < batched["stream_calls"]  # three streams' calls merged
    assert max(int(b) for h in batched["rows_per_execution"].values() for b in h) > 1
    assert png.stat().st_size > 10_000
