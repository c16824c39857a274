"""Assembles the Lightning Trainer from the config: run folder, loggers, checkpointing, early stopping, precision."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy

from .callbacks import AtomicCheckpointIO, CurvesAtEnd, SaveConfig, SaveOnInterrupt
from .config import Config, ConfigError
from .viz_callback import ValidationPictures

_VERSION_ENV = "SAM2TRAIN_RUN_VERSION"


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed (or 16-mixed without bf16) on CUDA, 32-true elsewhere. A half precision the device
    cannot run is an error naming the key, never a silent fallback."""
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if precision == "auto":
        if cuda:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    if precision in ("16-mixed", "16-true") and not cuda:
        raise ConfigError(
            f"config key 'trainer.precision': {precision} needs a CUDA GPU and none is in use here; "
            "use 'auto' (32 on CPU), 'bf16-mixed' or '32'"
        )
    return precision


def run_version(cfg: Config) -> str:
    """The run folder's name: `logging.version`, else the next free `version_<n>`. Chosen in the launching
    process and handed to the DDP workers Lightning starts (they have LOCAL_RANK set) through the environment, so
    every rank writes to the same folder. Under torchrun or SLURM, where ranks start independently, set
    `logging.version`."""
    if cfg.logging.version:
        return cfg.logging.version
    if "LOCAL_RANK" in os.environ and _VERSION_ENV in os.environ:
        return os.environ[_VERSION_ENV]
    base = Path(cfg.logging.root_dir) / cfg.logging.name
    taken = [int(m.group(1)) for p in base.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    version = f"version_{max(taken, default=-1) + 1}"
    os.environ[_VERSION_ENV] = version
    return version


def _require(package: str, kind: str) -> None:
    """A logger named in `logging.loggers` whose package is missing is a config error naming the pip extra."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"config key 'logging.loggers': {kind} needs the {package} package, which is not installed; "
            f"pip install 'sam2train[{kind}]' or remove {kind} from logging.loggers"
        )


def make_loggers(cfg: Config, version: str) -> list[Logger]:
    """The loggers of `logging.loggers`, all writing into the run folder <root_dir>/<name>/<version>.
    `logging.offline` runs wandb offline (synced later with `wandb sync`) and swanlab in its offline mode
    (`swanlab sync`); nothing is sent over the network then."""
    log_cfg = cfg.logging
    root, name = log_cfg.root_dir, log_cfg.name
    folder = Path(root) / name / version
    loggers: list[Logger] = []
    for kind in log_cfg.loggers:
        if kind == "tensorboard":
            loggers.append(TensorBoardLogger(root, name=name, version=version, default_hp_metric=False))
        elif kind == "csv":
            loggers.append(CSVLogger(root, name=name, version=version))
        elif kind == "wandb":
            _require("wandb", kind)
            from lightning.pytorch.loggers import WandbLogger

            folder.mkdir(parents=True, exist_ok=True)  # wandb writes <folder>/wandb/<run>
            loggers.append(
                WandbLogger(
                    project=log_cfg.project,
                    name=f"{name}-{version}",
                    save_dir=str(folder),
                    offline=log_cfg.offline,
                )
            )
        elif kind == "swanlab":
            _require("swanlab", kind)
            from swanlab.integration.pytorch_lightning import SwanLabLogger

            loggers.append(
                SwanLabLogger(
                    project=log_cfg.project,
                    experiment_name=f"{name}-{version}",
                    log_dir=str(folder / "swanlog"),
                    save_dir=str(folder),  # its log_dir property: the run folder, never the working directory
                    mode="offline" if log_cfg.offline else None,
                )
            )
    return loggers


# Groups whose every parameter takes part in every training step (for clips of 2+ frames). Any other group has
# parameters that some steps leave unused (point embeddings on a mask-prompted step, the neck level SAM 2 drops).
_ALWAYS_USED = {"memory_attention", "memory_encoder"}


def resolve_strategy(cfg: Config) -> str | Strategy:
    """`ddp` gets `find_unused_parameters` only when the trainable set requires it (it costs a graph walk per
    step); every other strategy name goes to Lightning unchanged."""
    name = cfg.trainer.strategy
    if name != "ddp":
        return name
    needed = not set(cfg.model.trainable_modules) <= _ALWAYS_USED or cfg.data.clip_length < 2
    return DDPStrategy(find_unused_parameters=needed)


def make_trainer(cfg: Config, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """A Trainer for `cfg`: TensorBoard + CSV logs in one run folder, best and last checkpoints (with the config
    inside and beside them), optional early stopping, the configured precision, clipping and accumulation.
    Checkpoint files are written atomically, and Ctrl-C or SIGTERM during fit saves a resumable `last.ckpt`."""
    t = cfg.trainer
    version = run_version(cfg)
    loggers = make_loggers(cfg, version)
    folder = Path(cfg.logging.root_dir) / cfg.logging.name / version
    ck = cfg.checkpoint
    has_val = cfg.data.val_path is not None
    checkpoint = ModelCheckpoint(
        dirpath=folder / "checkpoints",
        filename="epoch{epoch:03d}-step{step:06d}",
        auto_insert_metric_name=False,
        monitor=ck.monitor if has_val else None,  # without validation: keep the latest
        mode=ck.mode,
        save_top_k=ck.save_top_k if has_val else 1,
        save_last=ck.save_last,
        every_n_train_steps=ck.every_n_train_steps,
    )
    cbs: list[L.Callback] = [checkpoint, SaveConfig(cfg), CurvesAtEnd(), SaveOnInterrupt()]
    if has_val and cfg.logging.viz_every_n_epochs > 0:
        cbs.append(ValidationPictures(cfg.logging.viz_every_n_epochs))
    if cfg.early_stopping.enabled and has_val:
        es = cfg.early_stopping
        cbs.append(
            EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)
        )
    if cfg.logging.progress_bar == "rich":
        cbs.append(RichProgressBar())
    elif cfg.logging.progress_bar == "tqdm":
        cbs.append(TQDMProgressBar())
    cbs.extend(callbacks or [])
    kwargs = {}
    for key in ("limit_train_batches", "limit_val_batches"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=resolve_strategy(cfg),
        precision=resolve_precision(t.precision, t.accelerator),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval,
        num_sanity_val_steps=t.num_sanity_val_steps,
        deterministic=t.deterministic,
        logger=loggers or False,
        callbacks=cbs,
        default_root_dir=str(folder),
        enable_progress_bar=cfg.logging.progress_bar != "none",
        use_distributed_sampler=False,  # EpochSampler shards across ranks itself
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )
