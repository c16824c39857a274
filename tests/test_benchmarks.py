"""The ours-vs-Meta training-step benchmarks run end to end on a tiny setting (hiera t, 128 px, 2 frames, 1 step,
one torch thread) and write JSON (and the scaling PNG) with every field, into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--device=cpu", "--image-size=128", "--steps=1", "--warmup=0", "--threads=1"]

pytestmark = pytest.mark.slow


def _script(name: str) -> ModuleType:
    path = REPO / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))  # scaling.py imports train_step.py beside it
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _check_side(figures: dict[str, Any], frames: int) -> None:
    step = figures["step_s"]
    assert 0 < step["min"] <= step["median"] <= step["max"]
    assert 0 < figures["forward_s"]["median"] <= step["max"]
    assert figures["frames_per_s"] == pytest.approx(frames / step["median"])
    mem = figures["memory"]
    assert mem["kind"] == "rss" and 0 < mem["static_mb"] < mem["peak_mb"]
    assert mem["step_mb"] == pytest.approx(mem["peak_mb"] - mem["static_mb"])
    assert all(v == v and abs(v) < 1e6 for v in figures["loss"])  # finite


def _check_header(result: dict[str, Any], benchmark: str) -> None:
    assert result["benchmark"] == benchmark and result["device"] == "cpu" and result["timestamp"]
    env = result["environment"]
    assert {"torch", "sam2", "python", "platform", "cpu_count", "torch_threads", "load_avg"} <= set(env)
    assert env["torch_threads"] == 1
    assert result["trainable_params"] == 38_962_498  # every group of hiera t
    forced = result["meta_forced"]
    assert forced["prob_to_use_pt_input_for_train"] == 0.0 and forced["num_init_cond_frames_for_train"] == 1


def test_train_step_writes_both_sides_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    result = _script("train_step").main([*TINY, "--frames=2", "--objects=2", "--prompt=mask", f"--out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    _check_header(result, "train_step")
    s = result["settings"]
    assert (s["model"], s["image_size"], s["frames"], s["objects"], s["precision"]) == (
        "sam2.1_hiera_t",
        128,
        2,
        2,
        "32",
    )
    for side in ("ours", "meta"):
        _check_side(result[side], frames=2)
    q = result["ratios"]
    assert q["speed_ours_over_meta"] == pytest.approx(
        result["ours"]["frames_per_s"] / result["meta"]["frames_per_s"]
    )
    assert q["peak_memory_ours_over_meta"] > 0 and q["step_memory_ours_over_meta"] > 0


def test_scaling_writes_json_and_png(tmp_path: Path) -> None:
    args = [*TINY, "--frames=2", "--objects=2", "--variants=ours,lean", "--tag=_t", f"--out-dir={tmp_path}"]
    result = _script("scaling").main(args)
    saved = json.loads((tmp_path / "scaling_cpu_t.json").read_text())
    assert saved["points"] == json.loads(json.dumps(result["points"]))
    assert (tmp_path / "scaling_cpu_t.png").stat().st_size > 10_000
    _check_header(result, "scaling")
    assert result["sides"] == ["ours", "lean", "meta"]
    assert result["settings"]["object_chunk"] is None  # the variants are applied per side, not to the base
    assert result["grid"] == {"frames": [2], "objects": [2], "fixed_frames": 2, "fixed_objects": 2}
    assert [(p["sweep"], p["frames"], p["objects"]) for p in result["points"]] == [
        ("frames", 2, 2),
        ("objects", 2, 2),
    ]
    for point in result["points"]:
        for side in ("ours", "lean", "meta"):
            _check_side(point[side], frames=2)
        for key in ("ratios", "ratios_lean"):
            assert set(point[key]) == {
                "speed_ours_over_meta",
                "peak_memory_ours_over_meta",
                "step_memory_ours_over_meta",
            }
        # the lean side tracks the two objects one at a time from the same weights: the same loss but for the
        # dropout draws (exact equality without dropout is tests/test_object_chunk.py's)
        assert point["lean"]["loss"][0] == pytest.approx(point["ours"]["loss"][0], rel=1e-2)


def test_scaling_isolated_runs_each_side_alone_and_reports_out_of_memory(tmp_path: Path) -> None:
    scaling = _script("scaling")
    base = [*TINY, "--isolate", "--points=2x2", "--variants=ours", f"--out-dir={tmp_path}"]
    result = scaling.main([*base, "--tag=_iso"])
    assert result["isolated"] is True and result["sides"] == ["ours", "meta"]
    assert result["trainable_params"] > 0
    (point,) = result["points"]
    assert (point["frames"], point["objects"]) == (2, 2)
    for side in ("ours", "meta"):
        figures = point[side]
        assert 0 < figures["step_s"]["median"] and figures["memory"]["peak_mb"] > 100
    assert "out of memory" not in scaling.format_table(result)
    # a budget below what building the model takes: both sides reported out of memory, the sweep goes on
    starved = scaling.main([*base, "--tag=_oom", "--memory-budget-gb=0.05"])
    assert all(starved["points"][0][side]["out_of_memory"] for side in ("ours", "meta"))
    assert scaling.format_table(starved).count("out of memory (budget 0.05 GB)") == 2
    assert (tmp_path / "scaling_cpu_oom.png").is_file()
