"""The run a user lives with: `last.ckpt` is the last state however a run ends; extending a finished run with
`--ckpt last` continues it exactly (bit-identical to one straight run) in the same run folder; a checkpoint of
another run starts a new version that records its parent; `validate` uses the checkpoint's model settings; a
validation set with nothing to score, or an unknown monitor, stops `fit` at setup; a clean log."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from conftest import DEFAULT_CONFIG, fit_args
from sam2train.cli import main
from sam2train.data.demo import write_demo_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 training videos of 2 frames (a 3-step epoch of 2-frame clips) and 2 validation videos."""
    out = tmp_path_factory.mktemp("lifecycle_data")
    write_demo_dataset(out, videos=5, frames=2, size=(64, 64), objects=2, seed=3, val_videos=2)
    return out


def _args(data: Path, root: Path, *extra: str, val: bool = True, workers: int = 0) -> list[str]:
    run = ("data.stride=1", "trainer.deterministic=true", "logging.loggers=[csv]", "model.image_size=64")
    return fit_args(
        root,
        *run,
        "trainer.limit_val_batches=1",
        *extra,
        data=data,
        val=val,
        config=DEFAULT_CONFIG,
        workers=workers,
    )


def _run(root: Path, version: str = "version_0") -> Path:
    return root / "sam2train" / version


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _rows(run: Path, key: str) -> dict[int, str]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): r[key] for r in csv.DictReader(f) if r.get(key)}


class FinalWeights(L.Callback):
    """Keeps the module's weights when fit ends (after every checkpoint of the run was written)."""

    state: dict[str, torch.Tensor] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        FinalWeights.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.on_fit_end(trainer, pl_module)


class SigtermAt(L.Callback):
    """Sends this process SIGTERM after training step `step` (Lightning stops after the batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _with_callbacks(monkeypatch: pytest.MonkeyPatch, *callbacks: L.Callback) -> None:
    from sam2train.train import trainer as trainer_module

    make = trainer_module.make_trainer
    monkeypatch.setattr(trainer_module, "make_trainer", lambda cfg, *a, **k: make(cfg, [*callbacks], **k))


# ------------------------------------------------------------------------------------- 1. last.ckpt is the last


@pytest.mark.parametrize(
    ("extra", "val", "code"),
    [
        (("trainer.max_steps=4",), True, 0),  # a validation at step 3, then stopped mid-epoch 1
        (("trainer.max_steps=4", "checkpoint.every_n_train_steps=3"), False, 0),  # a step save, then 1 more
        pytest.param(("trainer.max_epochs=2",), True, 0, marks=pytest.mark.slow),  # the last epoch's end
        # SIGTERM after step 2 (SigtermAt)
        pytest.param(("trainer.max_steps=5",), True, 128 + signal.SIGTERM, marks=pytest.mark.slow),
    ],
    ids=["max_steps_after_validation", "every_n_train_steps", "max_epochs", "sigterm"],
)
def test_last_ckpt_holds_the_final_weights_however_the_run_ends(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...], val: bool, code: int
) -> None:
    callbacks: list[L.Callback] = [FinalWeights()]
    if code:
        callbacks.append(SigtermAt(2))
    _with_callbacks(monkeypatch, *callbacks)
    assert main(_args(data, tmp_path, *extra, val=val)) == code
    last = _load(_run(tmp_path) / "checkpoints" / "last.ckpt")
    assert last["global_step"] == (2 if code else 4 if "max_steps=4" in extra[0] else 6)
    for key, value in FinalWeights.state.items():
        assert torch.equal(last["state_dict"][key], value), key


# -------------------------------------------------------------------- 2, 3. extending a run continues it exactly


def _compare_runs(straight: Path, resumed: Path) -> None:
    a, b = _load(straight / "checkpoints" / "last.ckpt"), _load(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # one run folder: every step's loss and learning rate, each validation, the same best checkpoint
    for key in ("train/total", "lr", "val/J&F", "epoch"):
        assert _rows(resumed, key) == _rows(straight, key), key
    assert sorted(p.name for p in (resumed / "checkpoints").glob("epoch*.ckpt")) == sorted(
        p.name for p in (straight / "checkpoints").glob("epoch*.ckpt")
    )
    fa, fb = (json.loads((r / "final_metrics.json").read_text()) for r in (straight, resumed))
    for key in ("global_steps", "epochs", "best_score", "validation_history"):
        assert fa[key] == fb[key], key
    assert fb["best_model_path"].startswith(str(resumed))


def _extend(data: Path, tmp_path: Path, first: int, last: int, workers: int) -> None:
    common = ("trainer.log_every_n_steps=1",)
    assert main(_args(data, tmp_path / "a", *common, f"trainer.max_steps={last}", workers=workers)) == 0
    b = tmp_path / "b"
    assert main(_args(data, b, *common, f"trainer.max_steps={first}", workers=workers)) == 0
    assert (
        main([*_args(data, b, *common, f"trainer.max_steps={last}", workers=workers), "--ckpt", "last"]) == 0
    )
    assert sorted(p.name for p in (b / "sam2train").iterdir()) == ["version_0"]  # no second folder
    _compare_runs(_run(tmp_path / "a"), _run(b))


@pytest.mark.parametrize(
    "first", [2, pytest.param(3, marks=pytest.mark.slow)], ids=["mid_epoch", "epoch_end"]
)
def test_extending_a_finished_run_equals_one_straight_run(data: Path, tmp_path: Path, first: int) -> None:
    _extend(data, tmp_path, first, last=5, workers=0)


@pytest.mark.slow
def test_extending_a_finished_run_equals_one_straight_run_with_2_workers(data: Path, tmp_path: Path) -> None:
    _extend(data, tmp_path, 2, last=5, workers=2)


@pytest.mark.slow
def test_a_checkpoint_of_another_run_starts_a_new_version_that_records_it(data: Path, tmp_path: Path) -> None:
    assert main(_args(data, tmp_path, "trainer.max_steps=2")) == 0
    parent = _run(tmp_path) / "checkpoints" / "last.ckpt"
    assert main([*_args(data, tmp_path, "trainer.max_steps=3"), "--ckpt", str(parent)]) == 0  # same run
    moved = tmp_path / "elsewhere" / "start.ckpt"
    moved.parent.mkdir()
    shutil.copy(parent, moved)
    assert main([*_args(data, tmp_path, "trainer.max_steps=4"), "--ckpt", str(moved)]) == 0
    child = _run(tmp_path, "version_1")
    final = json.loads((child / "final_metrics.json").read_text())
    assert final["global_steps"] == 4
    assert final["parent"] == {"checkpoint": str(moved.resolve()), "global_step": 3}
    assert json.loads((child / "parent.json").read_text())["checkpoint"] == str(moved.resolve())
    assert (
        "parent" not in json.loads((_run(tmp_path) / "final_metrics.json").read_text())
        or json.loads((_run(tmp_path) / "final_metrics.json").read_text())["parent"] is None
    )


# ------------------------------------------------------------------------ 4. validate uses the checkpoint's model


def test_validate_takes_the_model_settings_from_the_checkpoint(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_args(data, tmp_path, "trainer.max_steps=1")) == 0
    ckpt = _run(tmp_path) / "checkpoints" / "last.ckpt"
    trained = (_run(tmp_path) / "config.yaml").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(trained.replace("image_size: 64", "image_size: 128"))
    capsys.readouterr()
    log = ["logging.progress_bar=none", f"logging.root_dir={tmp_path / 'val'}"]
    assert main(["validate", "--config", str(other), "--ckpt", str(ckpt), *log]) == 2
    err = capsys.readouterr().err
    assert "model.image_size" in err and "64" in err and "128" in err and len(err.strip().splitlines()) == 1
    # without --config: the checkpoint's own config, data included
    assert main(["validate", "--ckpt", str(ckpt), *log]) == 0
    printed = capsys.readouterr().out
    assert "val/J&F:" in printed
    # a dotted override is the documented way to validate at another size
    assert main(["validate", "--config", str(other), "--ckpt", str(ckpt), *log, "model.image_size=128"]) == 0


# ------------------------------------------------------------------- 5. nothing to score, a monitor never logged


def test_a_validation_set_annotated_on_its_prompt_frame_only_stops_fit_at_setup(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for later in (copy / "val" / "Annotations").glob("*/00001.png"):
        later.unlink()  # a "prompt-only" validation set: masks on the first frame only
    args = _args(copy, tmp_path / "runs", "trainer.max_steps=2", "data.val_clip_length=null")
    check = ["check-data", *args[1:3], *[a for a in args[3:] if a.startswith("data.")]]
    assert main(check) == 1
    out = capsys.readouterr().out
    assert "after its prompt frame" in out
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "after its prompt frame" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # stopped before training
    # the same without the data check at setup: still stopped at setup, one line
    assert main([*args, "data.check_at_setup=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "after its prompt frame" in err[0]
    assert not list((tmp_path / "runs").rglob("metrics.csv"))


def test_an_unknown_monitor_is_a_config_error_at_setup(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_args(data, tmp_path, "trainer.max_steps=2", "checkpoint.monitor=val/JF")) == 2
    err = capsys.readouterr().err
    assert "checkpoint.monitor" in err and "val/J&F" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_step_counter_is_a_monitor_lightning_supplies(data: Path, tmp_path: Path) -> None:
    # davis2016_scratch.yaml monitors `step` so that every periodic save is kept
    assert main(_args(data, tmp_path, "trainer.max_steps=2", "checkpoint.monitor=step")) == 0
    assert list(tmp_path.rglob("last.ckpt"))


# ------------------------------------------------------------------------------------------------ 9. a clean log


def test_a_short_fresh_run_logs_cleanly(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = _args(data, tmp_path, "trainer.max_steps=6", "logging.loggers=[tensorboard,csv]")
        extra = [
            "trainer.log_every_n_steps=50",
            "logging.viz_every_n_epochs=1",
            "trainer.limit_val_batches=null",
        ]
        assert main([*args, *extra]) == 0
    messages = [str(w.message) for w in caught] + capsys.readouterr().err.splitlines()
    assert not [m for m in messages if "will be deleted" in m or "logging interval" in m]
    assert len(_rows(_run(tmp_path), "train/total")) >= 2  # training rows although log_every_n_steps=50
    # a second epoch's pictures show the next validation video
    pictures = sorted(p.name for p in (_run(tmp_path) / "pictures").glob("*.png"))
    assert pictures == ["epoch000_demo_003.png", "epoch001_demo_004.png"]


@pytest.mark.slow
def test_validation_pictures_follow_viz_videos(data: Path, tmp_path: Path) -> None:
    args = _args(data, tmp_path, "trainer.max_steps=6", "logging.viz_videos=[demo_004]")
    assert main([*args, "trainer.limit_val_batches=null"]) == 0
    pictures = sorted(p.name for p in (_run(tmp_path) / "pictures").glob("*.png"))
    assert pictures == ["epoch000_demo_004.png", "epoch001_demo_004.png"]


def test_data_warnings_are_printed_once(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for folder in ("JPEGImages", "Annotations"):
        for frame in (copy / "train" / folder / "demo_000").glob("00001.*"):
            frame.unlink()  # 1 frame, fewer than data.clip_length=2: skipped with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(_args(copy, tmp_path / "runs", "trainer.max_steps=1")) == 0
    err = capsys.readouterr().err + "\n".join(str(w.message) for w in caught)
    assert len([line for line in err.splitlines() if "demo_000" in line]) == 1, err


def test_progress_bar_shows_the_learning_rate_and_the_run_length() -> None:
    from sam2train.train.run_log import bar_metrics, epoch_description

    shown = bar_metrics({"lr": 1e-4, "train/total": 0.5, "v_num": "on_0"})
    assert shown == {"lr": "1.0e-04", "train/total": 0.5}
    trainer = SimpleNamespace(max_epochs=50, max_steps=4, num_training_batches=2, accumulate_grad_batches=1)
    assert epoch_description(trainer, 1) == "Epoch 1/1"
    trainer.max_steps = -1
    assert epoch_description(trainer, 1) == "Epoch 1/49"
