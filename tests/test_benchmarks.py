"""Benchmark front ends produce JSON with provenance, and the report turns it into docs."""

from __future__ import annotations

import json

from benchmarks import bench_models, report


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
