"""`sam2train benchmark`: a few real training steps of a config, with its table and JSON; `--fit-memory` gives a
clear answer; a bad budget is a one-line error. Tiny settings: demo data, the tiny SAM 2 at 128 px, 2 frames,
1 step after 1 warm-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO_CONFIG, TINY_CONFIG, TINY_SIZE
from sam2train.cli import main
from sam2train.cli.benchmark import parse_size
from sam2train.errors import UserError
from sam2train.train.benchmark import Measurement, default_axes, fit_memory

FIELDS = (
    "s_per_step",
    "clips_per_s",
    "object_frames_per_s",
    "peak_memory_bytes",
    "peak_memory_kind",
    "frames_per_clip",
    "objects_per_clip",
    "device",
    "precision",
)


def _args(data: Path, *extra: str) -> list[str]:
    return [
        "benchmark",
        "--config",
        str(DEMO_CONFIG),
        f"data.train_path={data / 'train'}",
        "data.clip_length=2",
        "data.num_workers=0",
        f"model.config={TINY_CONFIG}",
        f"model.image_size={TINY_SIZE}",
        "trainer.accelerator=cpu",
        "--steps",
        "1",
        "--warmup",
        "1",
        *extra,
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_benchmark_prints_table_and_json(demo_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(_args(demo_data, "--in-process", "--json", str(out))) == 0
    printed = capsys.readouterr().out
    for label in ("s/step", "clips/s", "object-frames/s", "peak memory", "peak RSS"):
        assert label in printed, label
    report = json.loads(out.read_text())
    assert set(FIELDS) <= set(report) and report["overrides"][0].startswith("data.train_path=")
    assert report["device"] == "cpu" and report["precision"] == "32-true"
    assert (report["steps"], report["warmup"], report["batches"], report["clips"]) == (1, 1, 1, 1)
    assert report["frames_per_clip"] == 2 and report["objects_per_clip"] == 2  # the demo clips' 2 objects
    assert report["s_per_step"] > 0 and report["peak_memory_bytes"] > 2**20
    assert report["clips_per_s"] == pytest.approx(1 / report["s_per_step"])
    assert report["object_frames_per_s"] == pytest.approx(4 * report["clips_per_s"])  # 2 frames x 2 objects


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_benchmark_table_names_the_adapters(demo_data: Path, capsys) -> None:
    lora = ["model.adapters.type=lora", "model.adapters.r=4", "model.adapters.targets=[memory_attention]"]
    args = _args(demo_data, "--in-process")
    at = args.index("--steps")  # overrides go with the config's, before the options
    args[at:at] = [*lora, "model.trainable_modules=[sam_mask_decoder]"]
    assert main(args) == 0
    printed = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table may wrap the cell
    assert "trains sam_mask_decoder + lora r=4 on memory_attention" in printed


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fit_memory_with_a_tiny_budget_says_nothing_fits(demo_data: Path, capsys) -> None:
    """1 MiB: the most frugal setting (clip length 2, one object per chunk) is tried, once, and does not fit."""
    assert main(_args(demo_data, "--in-process", "--fit-memory", "1MB", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is False and report["chosen"] is None and report["budget_bytes"] == 2**20
    assert report["answer"].startswith("nothing fits in 1.00 MiB: the most frugal setting tried")
    assert "data.clip_length=2 model.object_chunk=1" in report["answer"]
    assert [t["settings"] for t in report["tried"]] == [{"data.clip_length": 2, "model.object_chunk": 1}]
    assert report["tried"][0]["peak_memory_bytes"] > 2**20


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fit_memory_in_child_processes_finds_what_fits(demo_data: Path, tmp_path: Path, capsys) -> None:
    """Each setting in a fresh process: with room to spare the largest setting of every axis is chosen."""
    search = ["--search", "data.clip_length=3,2", "--search", "model.object_chunk=null,1"]
    out = tmp_path / "fit.json"
    assert main(_args(demo_data, "--fit-memory", "64GB", *search, "--json", str(out))) == 0
    assert "fits in 64.00 GiB: data.clip_length=3 model.object_chunk=null" in capsys.readouterr().out
    tried = json.loads(out.read_text())["tried"]
    assert [t["settings"] for t in tried] == [  # clip length 3 at chunk 1, then chunk null: two children
        {"data.clip_length": 3, "model.object_chunk": 1},
        {"data.clip_length": 3, "model.object_chunk": None},
    ]
    assert all(t["peak_memory_kind"] == "peak RSS" and t["frames_per_clip"] == 3 for t in tried)


def test_fit_memory_search_takes_each_axis_largest_first() -> None:
    """The search itself, on made-up peaks: bytes = clip length x objects per chunk (null: 4 objects)."""
    runs: list[dict] = []

    def run(settings: dict) -> Measurement:
        runs.append(dict(settings))
        chunk = settings["model.object_chunk"] or 4
        return Measurement(
            settings={}, peak_memory_bytes=settings["data.clip_length"] * chunk, s_per_step=1.0
        )

    axes = [("data.clip_length", [16, 12, 8, 6, 4, 2]), ("model.object_chunk", [None, 2, 1])]
    search = fit_memory(axes, budget=16, run=run)
    assert search.chosen is not None and search.chosen.settings == {
        "data.clip_length": 16,
        "model.object_chunk": 1,
    }
    assert len(runs) == len({tuple(r.items()) for r in runs})  # no setting measured twice
    search = fit_memory(
        axes, budget=24, run=run
    )  # clip 16 fits only one object at a time; null (4) fits at 6
    assert search.chosen.settings == {"data.clip_length": 16, "model.object_chunk": 1}
    search = fit_memory(
        [("model.object_chunk", [None, 2, 1])], budget=40, run=lambda s: run({**s, "data.clip_length": 8})
    )
    assert search.chosen.settings == {"model.object_chunk": None}  # null is a value, not "nothing fits"
    assert fit_memory(axes, budget=1, run=run).chosen is None
    oom = fit_memory(axes, budget=10**9, run=lambda s: Measurement(settings={}, out_of_memory=True))
    assert oom.chosen is None and len(oom.tried) == 3  # binary search over the 6 clip lengths


def test_default_axes_follow_the_config() -> None:
    from sam2train.config import load_config

    cfg = load_config(DEMO_CONFIG, ["data.clip_length=8", "data.max_objects=3"])
    assert default_axes(cfg) == [("data.clip_length", [8, 6, 4, 3, 2]), ("model.object_chunk", [None, 2, 1])]
    cfg = load_config(DEMO_CONFIG, ["data.clip_length=2", "data.max_objects=null"])
    assert default_axes(cfg) == [("data.clip_length", [2]), ("model.object_chunk", [None, 8, 4, 2, 1])]


@pytest.mark.parametrize("budget", ["24XB", "lots", "-1GB", "0GB", "GB", "1.5.2G"])
def test_bad_budget_is_a_one_line_error(budget: str, capsys) -> None:
    assert main(["benchmark", "--config", str(DEMO_CONFIG), f"--fit-memory={budget}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam2train benchmark: error: --fit-memory:") and "\n" not in err
    assert f"'{budget}'" in err


def test_bad_search_key_is_refused_before_any_run(capsys) -> None:
    args = [
        "benchmark",
        "--config",
        str(DEMO_CONFIG),
        "--fit-memory",
        "8GB",
        "--search",
        "data.clip_lenght=4,2",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'data.clip_lenght'" in err and "data.clip_length" in err and "\n" not in err


def test_budget_sizes() -> None:
    assert parse_size("24GB") == parse_size("24 GiB") == parse_size("24g") == 24 * 2**30
    assert (
        parse_size("1.5GiB") == 3 * 2**29
        and parse_size("500MB") == 500 * 2**20
        and parse_size("2048") == 2048
    )
    with pytest.raises(UserError, match="not a memory size"):
        parse_size("24 gigabytes")
