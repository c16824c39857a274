"""benchmarks/predict.py end to end on its toy grid (hiera t, 128 px, 1-2 objects, 4-8 frames, one round, one
thread): each side in its own child process, both sides' figures, ratios and PNG agreement in the JSON. DAVIS-2016
frames when ../shared/data is there, else the demo-data frames. No check depends on a timing's value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_predict_benchmark_toy_grid(tmp_path: Path) -> None:
    out = tmp_path / "predict_cpu.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "predict.py"), "--toy", f"--work={tmp_path / 'work'}"]
    proc = subprocess.run([*cmd, f"--out={out}"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "predict" and result["device"] == "cpu"
    env = result["environment"]
    assert {"torch", "sam2", "cpu_count", "torch_threads", "load_avg", "load_avg_end"} <= set(env)
    assert result["settings"]["threads"] == 1
    points = {(p["size"], p["objects"], p["frames"]): p for p in result["points"]}
    assert set(points) == {(128, n, length) for n in (1, 2) for length in (4, 8)}
    for (_, _, length), point in points.items():
        for side in ("ours", "meta"):
            figures = point[side]
            assert figures["rounds_done"] == 1, figures["runs"][0].get("log_tail")
            run = figures["runs"][0]
            assert run["frames"] == run["pngs"] == length and run["torch_threads"] == 1
            assert figures["s_per_frame"] > 0 and figures["s_per_frame_from_ready"] > 0
            assert 0 < figures["startup_s"] < figures["total_s"] <= figures["wall_s"]
            assert figures["peak_rss_mb"] > 0 and figures["sys_s"] >= 0
        q = point["ratios"]
        assert q["s_per_frame"] == pytest.approx(point["ours"]["s_per_frame"] / point["meta"]["s_per_frame"])
        assert q["peak_rss_mb"] == pytest.approx(point["ours"]["peak_rss_mb"] / point["meta"]["peak_rss_mb"])
        agreement = point["agreement"]
        assert agreement["frames_compared"] == length
        assert agreement["differing_pixel_fraction"] < 1e-2
    assert "diff px" in proc.stdout  # the table
