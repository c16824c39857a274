"""The non-finite guard: a NaN/Inf loss skips its (accumulated) optimizer step and is counted; too many in a row
stop the run with an error naming trainer.max_bad_steps, and the last checkpoint keeps good weights; the counts
travel in the checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import DEFAULT_CONFIG, fit_args
from sam2train.cli import main
from sam2train.data.demo import write_demo_dataset
from sam2train.losses import LossOutput
from sam2train.train.guards import NonFiniteGuard
from sam2train.train.module import SAM2LightningModule
from sam2train.train.resume import RESUME_KEY


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guard_data")
    write_demo_dataset(out, videos=2, frames=8, size=(64, 64), objects=2, seed=5, val_videos=0)
    return out


def _args(data: Path, root: Path, *extra: str) -> list[str]:
    extra = ("data.stride=1", "trainer.log_every_n_steps=1", "logging.loggers=[csv]", *extra)
    return fit_args(root, *extra, data=data, val=False, config=DEFAULT_CONFIG, version="run")


Weights = dict[str, torch.Tensor]


def _poison(monkeypatch: pytest.MonkeyPatch, bad: dict[int, float]) -> list[Weights]:
    """Multiply the loss of the given training batches (0-based, micro-batches) by NaN or Inf; return the
    trainable weights (by state_dict key) as each batch starts."""
    original = SAM2LightningModule.compute_loss
    weights: list[Weights] = []

    def loss(self, out, batch):
        result = original(self, out, batch)
        if self.training:
            weights.append({k: p.detach().clone() for k, p in self.named_parameters() if p.requires_grad})
            factor = bad.get(len(weights) - 1)
            if factor is not None:
                return LossOutput(result.total * factor, result.terms)
        return result

    monkeypatch.setattr(SAM2LightningModule, "compute_loss", loss)
    return weights


def _same(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _column(run: Path, key: str) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def test_non_finite_steps_are_skipped_and_counted_with_accumulation(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 optimizer steps of 2 micro-batches; a NaN in the first micro-batch of step 1, an Inf in the second of step 2
    weights = _poison(monkeypatch, {2: float("nan"), 5: float("inf")})
    extra = ("trainer.max_steps=4", "trainer.accumulate_grad_batches=2", "trainer.max_bad_steps=3")
    assert main(_args(data, tmp_path, *extra)) == 0
    assert len(weights) == 8
    assert not _same(weights[0], weights[2])  # step 0 trained
    assert _same(weights[2], weights[4])  # step 1 (NaN in micro-batch 2) left the weights as they were
    assert _same(weights[4], weights[6])  # step 2 (Inf in micro-batch 5) too
    assert all(torch.isfinite(w).all() for w in weights[-1].values())
    skipped = _column(tmp_path / "sam2train" / "run", "train/skipped_steps")
    assert [skipped[s] for s in sorted(skipped)] == [0.0, 1.0, 2.0, 2.0]


def test_too_many_bad_steps_stop_with_a_clear_error_and_keep_the_last_good_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    weights = _poison(monkeypatch, {i: float("nan") for i in range(2, 100)})
    extra = ("trainer.max_steps=10", "trainer.max_bad_steps=2", "checkpoint.every_n_train_steps=1")
    assert main(_args(data, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert "trainer.max_bad_steps" in err and "optimizer.lr" in err and "precision" in err
    assert len(weights) == 4  # 2 good steps, then 2 NaN steps in a row
    last = torch.load(tmp_path / "sam2train" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert _same(weights[2], {k: last["state_dict"][k] for k in weights[2]})  # after the last good step
    # saved after the first NaN step: a resume goes on counting from there
    assert last["callbacks"][NonFiniteGuard(2).state_key] == {"skipped_steps": 1, "bad_streak": 1}


def test_guard_counts_resume_from_its_state_and_from_checkpoints_of_before() -> None:
    guard = NonFiniteGuard(5)
    guard.skipped_steps, guard.bad_streak = 3, 2
    resumed = NonFiniteGuard(5)
    resumed.load_state_dict(guard.state_dict())
    assert (resumed.skipped_steps, resumed.bad_streak) == (3, 2)
    # checkpoints written while the guard lived in the LightningModule kept the counts beside the RNG states
    old = NonFiniteGuard(5)
    old.on_load_checkpoint(None, None, {RESUME_KEY: {"skipped_steps": 4, "bad_streak": 1, "rng": {}}})
    assert (old.skipped_steps, old.bad_streak) == (4, 1)
    fresh = NonFiniteGuard(5)
    fresh.on_load_checkpoint(None, None, {RESUME_KEY: {"rng": {}}})
    assert (fresh.skipped_steps, fresh.bad_streak) == (0, 0)
