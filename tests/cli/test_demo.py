"""`stylestream demo` writes the side-by-side video, metrics and contact sheet."""

from __future__ import annotations

import json

import cv2
import pytest

from realtime import cli
from tests.media import probe


@pytest.mark.slow
def test_demo_writes_video_metrics_and_contact_sheet(tmp_path, tiny_bundle_dir, capsys):
    out = tmp_path / "demo_out"
    rc = cli.main(["demo", "-o", str(out), "--bundle", str(tiny_bundle_dir), "--seconds", "2", "--fps", "15",
                   "--size", "480x360", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    # issue 17.13: not a terminal here, so no bars: every phase still says where it is, in plain lines
    lines = err.splitlines()
    assert lines[0].startswith("stylestream demo: filtering a 2 s synthetic talking-head clip"), lines[:3]
    assert lines[2].startswith("bundle 'random'"), lines[:3]  # the tiny test bundle's name
    for phase in ("writing input.mp4: 30/30", "preparing the engine", "filtering: 30/30",
                  "measuring encoder fidelity"):
        assert any(ln.startswith(phase) for ln in lines), (phase, err)
    info = probe(out / "side_by_side.mp4")
    assert info.frames == 30 and info.sizes[0] == (960, 360)
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["frames_out"] == 30 and m["run"]["faces"] >= 25
    fid = m["crop_fidelity"]
    assert fid["crops"] >= 8 and 0 < fid["fren"]["psnr_db"] < 60 and fid["vien_reuse"]["tc"] >= 0
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 960 and sheet.shape[0] > 720
    assert not (out / "run_stats.json").exists()
