"""benchmarks/gpu_suite.py at toy sizes on the CPU: the JSON it writes, its time boxes, and (slow) every section
end to end with the tiny SAM 2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
_spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
assert _spec is not None and _spec.loader is not None
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)


def _suite(tmp_path: Path, *args: str, timeout: int = 1500) -> dict:
    out = tmp_path / "suite.json"
    cmd = [sys.executable, str(SUITE), "--toy", "--model", TINY_CONFIG, "--work", str(tmp_path / "work"),
           "--out", str(out), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_environment_section_writes_the_card_and_versions(tmp_path: Path) -> None:
    result = _suite(tmp_path, "--sections", "environment")
    for key in ("card", "driver", "torch", "cuda", "settings", "sections", "summary", "total_s", "timestamp"):
        assert key in result, key
    assert result["card"] == "cpu" and result["toy"] is True
    env = result["sections"]["environment"]
    assert env["status"] == "ok", env
    assert env["versions"]["sam2"] and env["matmul_cpu_gflops"] > 0
    assert list(result["sections"]) == ["environment"]


def test_a_section_past_its_time_box_is_recorded_and_killed(tmp_path: Path) -> None:
    args = gpu_suite.parse_args(["--toy", "--model", TINY_CONFIG])
    record = gpu_suite.run_child(args, "recipes", tmp_path, limit=0.5)
    assert record["status"] == "timeout" and record["limit_s"] == 0 and record["seconds"] < 30
    assert "error" in record


def test_unknown_section_is_refused() -> None:
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--sections", "environment,warp_drive"])


@pytest.mark.slow
def test_every_section_runs_end_to_end_at_toy_sizes(tmp_path: Path) -> None:
    """Each section on the CPU: the recipes' 2-step bf16-mixed fits, ours vs Meta's step (one side per process),
    the feature cache's three sides, predict vs Meta's predictor, the DAVIS recipe on the demo data."""
    result = _suite(tmp_path)
    sections = result["sections"]
    assert list(sections) == list(gpu_suite.SECTIONS)
    for name, record in sections.items():
        assert record["status"] == "ok", (name, record.get("error"))
    fits = sections["recipes"]["recipes"]
    assert set(fits) == {p.stem for p in (REPO / "src" / "sam2train" / "recipes").glob("*.yaml")}
    assert all(f["ok"] and f["train_total"] for f in fits.values()), fits
    points = sections["train_step"]["points"]
    assert set(points) == {"N2", "N3"} and set(points["N3"]) == {"ours", "chunked", "lean", "meta"}
    assert all("step_s" in side for point in points.values() for side in point.values()), points
    cache = sections["feature_cache"]["summary"]
    assert {"encoder_share", "cache_over_floor", "speedup", "floor_epoch_s"} <= set(cache)
    predict = sections["predict"]
    assert predict["ours"]["frames_per_s"] > 0 and predict["meta"]["frames_per_s"] > 0
    assert sections["davis"]["steps"] == 2
    summary = result["summary"]
    assert summary["recipes_failed"] == [] and "predict_ours_frames_per_s" in summary
