"""wandb and swanlab loggers from `logging.loggers`, in offline mode: the runs they write hold the logged metrics
and the validation pictures; a missing package is a config error naming the pip extra."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import DEMO_CONFIG
from sam2train.config import load_config
from sam2train.errors import ConfigError
from sam2train.train.pictures import IMAGE_TAG
from sam2train.train.trainer import make_loggers, make_trainer


class _Echo(L.LightningModule):
    """Stands in for SAM2LightningModule: predicts the ground truth, one scalar to train."""

    def __init__(self, make_batch) -> None:
        super().__init__()
        self.make_batch = make_batch
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        return SimpleNamespace(mask_logits=torch.where(batch.masks > 0.5, 1.0, -1.0) + 0 * self.w)

    def _loss(self) -> torch.Tensor:
        return (self.w - 1) ** 2

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss()
        self.log("train/total", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/total", self._loss())
        self.last_val_prediction = self(batch).mask_logits[:1] > 0  # what ValidationPictures draws

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def _loader(self) -> DataLoader:
        return DataLoader(
            range(2), batch_size=None, collate_fn=lambda _: self.make_batch(kinds=[["mask"]], t=2)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


def _fit(root: Path, logger: str, make_video_batch) -> Path:
    """Two training steps and a validation with loggers [csv, `logger`] offline; returns the run folder."""
    cfg = load_config(
        DEMO_CONFIG,
        [
            f"data.val_path={root}",
            f"logging.root_dir={root}",
            "logging.version=v",
            f"logging.loggers=[csv,{logger}]",
            "logging.offline=true",
            "logging.progress_bar=none",
            "logging.viz_every_n_epochs=1",
            "checkpoint.monitor=val/total",
            "checkpoint.mode=min",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1",
        ],
    )
    trainer = make_trainer(cfg)
    trainer.fit(_Echo(make_video_batch))
    run = root / "demo" / "v"
    assert (run / "pictures" / "epoch000_synthetic_0.png").is_file()
    return run


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing reaches the network or the home folder."""
    home = tmp_path / "home"
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(home / "wandb-config"),
        "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_DATA_DIR": str(home / "wandb-data"),
        "SWANLAB_MODE": "offline",
        "SWANLAB_ROOT": str(home / "swanlab"),
        "SWANLAB_CONFIG_DIR": str(home / "swanlab-config"),
    }.items():
        monkeypatch.setenv(key, value)


def test_wandb_offline_run_holds_metrics_and_pictures(tmp_path: Path, offline_env, make_video_batch) -> None:
    wandb = pytest.importorskip("wandb")
    try:
        run = _fit(tmp_path / "runs", "wandb", make_video_batch)
    finally:
        wandb.finish()  # flushes the run file; Lightning leaves the run open
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    # wandb's service process may still be writing the run file after finish() returns on a busy machine
    for _ in range(60):
        data = b"".join(p.read_bytes() for p in offline[0].glob("run-*.wandb"))
        if b"val/total" in data and IMAGE_TAG.encode() in data:
            break
        time.sleep(1)
    assert b"train/total" in data and b"val/total" in data and IMAGE_TAG.encode() in data
    assert list((offline[0] / "files" / "media" / "images").rglob("*.png"))


def test_swanlab_offline_run_holds_metrics_and_pictures(
    tmp_path: Path, offline_env, make_video_batch
) -> None:
    swanlab = pytest.importorskip("swanlab")
    try:
        run = _fit(tmp_path / "runs", "swanlab", make_video_batch)
    finally:
        swanlab.finish()  # the Lightning integration finishes a run only when it failed
    files = list((run / "swanlog").glob("run-*/run-*.swanlab"))
    assert len(files) == 1
    data = files[0].read_bytes()
    assert b"train/total" in data and b"val/total" in data and IMAGE_TAG.encode() in data
    assert list((files[0].parent / "media").rglob("*.png"))


@pytest.mark.parametrize("kind", ["wandb", "swanlab"])
def test_missing_logger_package_names_the_key_and_extra(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, kind, None)  # import machinery: "not installed"
    cfg = load_config(DEMO_CONFIG, [f"logging.loggers=[csv,{kind}]"])
    with pytest.raises(ConfigError, match=rf"logging\.loggers.*sam2train\[{kind}\]"):
        make_loggers(cfg, "v")
