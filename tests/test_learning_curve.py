"""The DAVIS-2016 from-scratch recipe and the learning-curve benchmark: the recipe holds the measured setting, a
2-step fit of it runs at 128 px, and the script's JSON and PNG carry every field (tiny budget, 4 frames scored)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from sam2train.config import TRAINABLE_GROUPS, load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "davis2016_scratch.yaml"
HELDOUT = ["bmx-trees", "camel", "dance-twirl", "goat", "libby", "soapbox"]

# the script trains from random weights on purpose
pytestmark = pytest.mark.filterwarnings("ignore:model.checkpoint is null:UserWarning")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("learning_curve", REPO / "benchmarks" / "learning_curve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_is_hiera_tiny_from_scratch_on_the_reference_split() -> None:
    cfg = load_config(RECIPE)
    assert (cfg.model.config, cfg.model.checkpoint, cfg.model.image_size) == ("sam2.1_hiera_t", None, 256)
    assert sorted(cfg.model.trainable_modules) == sorted(TRAINABLE_GROUPS)
    assert cfg.data.train_path == cfg.data.val_path == "data/davis2016"
    assert cfg.data.val_videos == HELDOUT
    assert len(cfg.data.train_videos) == 14 and not set(cfg.data.train_videos) & set(HELDOUT)
    assert 4 <= cfg.data.clip_length <= 6 and cfg.data.augment and cfg.data.val_clip_length is None
    assert (cfg.prompts.type, cfg.prompts.val_type) == ("mixed", "mask")
    assert (cfg.optimizer.type, cfg.optimizer.lr, cfg.trainer.gradient_clip_val) == ("AdamW", 1e-4, 1.0)
    sch = cfg.scheduler
    assert (sch.warmup_steps, sch.interval, sch.T_max) == (20, "step", cfg.trainer.max_steps)
    assert (cfg.checkpoint.every_n_train_steps, cfg.checkpoint.save_top_k) == (150, -1)


def test_recipe_names_sequences_of_the_shared_data(shared_data: Path) -> None:
    cfg = load_config(RECIPE)
    frames = shared_data / "davis2016" / "JPEGImages" / "480p"
    assert all((frames / seq).is_dir() for seq in cfg.data.train_videos + cfg.data.val_videos)


@pytest.fixture(scope="module")
def tiny_curve(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the script: 2 steps at 128 px, a checkpoint each step, 1 held-out and 1 fit sequence scored
    on their first 4 frames (about 50 s on 2 CPU cores)."""
    tmp = tmp_path_factory.mktemp("learning_curve")
    out = _script().main(
        [
            *("--steps", "2", "--every", "1", "--image-size", "128", "--frames-limit", "4"),
            *("--heldout", "libby", "--fit-seqs", "car-shadow", "--data", str(shared_data / "davis2016")),
            *("--out-dir", str(tmp / "results"), "--run-root", str(tmp / "runs")),
            "data.num_workers=0",
            "data.val_clip_length=4",
            "trainer.limit_val_batches=1",
            "checkpoint.save_last=false",  # 467 MB less to write: the curve reads the periodic checkpoints only
            "logging.progress_bar=none",
            "logging.viz_every_n_epochs=0",
        ]
    )
    return {"path": out, **json.loads(out.read_text())}


@pytest.mark.slow
def test_two_step_fit_of_the_recipe_keeps_a_checkpoint_per_step(tiny_curve: dict[str, Any]) -> None:
    run = Path(tiny_curve["run_dir"])
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch*.ckpt")) == [
        "epoch000-step000001.ckpt",
        "epoch000-step000002.ckpt",
    ]
    assert (run / "initial.ckpt").is_file() and (run / "config.yaml").is_file()
    # step 0 of the curve is the model the fit started from: one warmup step (lr 1e-7) away from step 1
    initial = torch.load(run / "initial.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    ckpt = run / "checkpoints" / "epoch000-step000001.ckpt"
    step1 = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert initial.keys() == step1.keys()
    change = max((v.float() - step1[k].float()).abs().max().item() for k, v in initial.items())
    assert 0 < change < 1e-5
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_steps"] == 2
    cfg = tiny_curve["config"]
    assert cfg["model"]["image_size"] == 128 and cfg["trainer"]["max_steps"] == cfg["scheduler"]["T_max"] == 2
    assert cfg["data"]["val_videos"] == ["libby"] and "libby" not in cfg["data"]["train_videos"]
    assert len(cfg["data"]["train_videos"]) == 14


@pytest.mark.slow
def test_learning_curve_json_and_png(tiny_curve: dict[str, Any]) -> None:
    result, path = tiny_curve, tiny_curve["path"]
    assert path.name == f"learning_{result['device']}.json" and path.with_suffix(".png").stat().st_size > 0
    assert (result["heldout_sequences"], result["fit_sequences"]) == (["libby"], ["car-shadow"])
    assert (result["steps"], result["every"], result["image_size"], result["frames_limit"]) == (2, 1, 128, 4)
    points = [result["initial"], result["copy_first_frame"], *result["checkpoints"]]
    for point in points:
        for split in ("heldout", "fit"):
            assert 0.0 <= point[split] <= 1.0 and point[split] == point["detail"][split]["J&F"]
            assert set(point["detail"][split]) >= {"J", "F", "J_recall", "J_decay", "per_sequence_J&F"}
    assert [p["step"] for p in [result["initial"], *result["checkpoints"]]] == [0, 1, 2]
    # copying the first-frame mask over 4 frames of slow motion is a strong baseline; a random SAM 2 is not
    assert result["copy_first_frame"]["heldout"] > result["initial"]["heldout"]
    assert result["best"]["step"] in (1, 2) and set(result["best"]) == {"step", "heldout", "fit"}
    mean = result["mean_last_two"]
    assert mean["steps"] == [1, 2]
    assert mean["heldout"] == pytest.approx(sum(c["heldout"] for c in result["checkpoints"]) / 2, abs=1e-6)
    assert result["machine"]["cpu_count"] >= 1 and result["wall_time_s"]["total"] > 0
    assert result["config_file"] == "configs/davis2016_scratch.yaml"
