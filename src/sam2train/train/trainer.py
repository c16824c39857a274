"""Assembles the Lightning Trainer from the config: run folder, loggers, checkpointing, early stopping, precision,
and the DDP / FSDP strategy (docs/multi-gpu.md)."""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_warn

from sam2train.config import Config
from sam2train.errors import ConfigError
from sam2train.train.callbacks import (
    AtomicCheckpointIO,
    CurvesAtEnd,
    LastCheckpoint,
    RunRecord,
    SaveConfig,
    SaveOnInterrupt,
)
from sam2train.train.gpu import apply_matmul_precision, cudnn_benchmark
from sam2train.train.guards import NonFiniteGuard
from sam2train.train.pictures import ValidationPictures
from sam2train.train.resume import ResumePlan
from sam2train.train.run_log import LogInterval, ResumableCSVLogger, RunRichProgressBar, RunTQDMProgressBar
from sam2train.train.validation import MonitorCheck

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
    every rank writes to the same folder. Under torchrun or SLURM, ranks start independently and each scans the
    folder: they agree when no rank creates the run folder before all have joined the process group (true with
    the tensorboard and csv loggers; wandb's folder is made here). Set `logging.version` there."""
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


def make_loggers(cfg: Config, version: str, resume_step: int | None = None) -> list[Logger]:
    """The loggers of `logging.loggers`, all writing into the run folder <root_dir>/<name>/<version>.
    `resume_step`: the run continues in its folder from a checkpoint of that global step; the TensorBoard and CSV
    logs keep what was logged before it and append. `logging.offline` runs wandb offline (synced later with
    `wandb sync`) and swanlab in its offline mode (`swanlab sync`); nothing is sent over the network then."""
    log_cfg = cfg.logging
    root, name = log_cfg.root_dir, log_cfg.name
    folder = Path(root) / name / version
    loggers: list[Logger] = []
    for kind in log_cfg.loggers:
        if kind == "tensorboard":
            purge = {} if resume_step is None else {"purge_step": resume_step}
            loggers.append(
                TensorBoardLogger(root, name=name, version=version, default_hp_metric=False, **purge)
            )
        elif kind == "csv":
            loggers.append(ResumableCSVLogger(root, name=name, version=version, resume_step=resume_step))
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
    step); `fsdp` gets one FSDP unit per repeated SAM 2 block (see `fsdp_strategy`); every other strategy name
    goes to Lightning unchanged."""
    name = cfg.trainer.strategy
    if name == "fsdp":
        return fsdp_strategy()
    if name != "ddp":
        return name
    one_frame = cfg.data.clip_length < 2 or cfg.data.image_clip == "single"  # images as one-frame clips
    needed = not set(cfg.model.trainable_modules) <= _ALWAYS_USED or one_frame
    return DDPStrategy(find_unused_parameters=needed)


class _FSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, which wraps the module once per trainer, and runs on CPU (gloo) too: tests, and a
    dry run on a laptop before a GPU job.

    Lightning wraps the LightningModule anew at every stage (`trainer.validate` then `trainer.fit`, as
    `trainer.validate_first` runs), but FSDP cannot wrap parameters it has already flattened; the wrapper of the
    first stage is kept and reused. On CPU, three more things differ. Lightning refuses `fsdp` without a GPU
    accelerator; its type check tests the exact class, so this subclass passes. Lightning hands torch's FSDP
    `device_id=None` there, with which FSDP looks for an accelerator and fails; given the CPU device, FSDP runs.
    And the full optimizer state is gathered without "offloading to the CPU": torch gathers all of a parameter's
    states (exp_avg, exp_avg_sq) into one buffer and copies each out only by that offload, a no-op on the CPU, so
    every state would hold the last one's values.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wrapped: torch.nn.Module | None = None

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._wrapped is not None and self._wrapped.module is model:
            return self._wrapped
        if self.root_device.type != "cpu" or isinstance(model, FullyShardedDataParallel):
            self._wrapped = super()._setup_model(model)
        else:
            self._wrapped = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
        return self._wrapped

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.fsdp import (
            FullOptimStateDictConfig,
            FullStateDictConfig,
            OptimStateKeyType,
            StateDictType,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's torch optimizer
        model = self.model
        assert model is not None
        with FSDP.state_dict_type(
            model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        ):
            state = FSDP.optim_state_dict(model, optimizer)
        if self.global_rank == 0:  # the standard format, as Lightning stores it
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, model)
        return state


def fsdp_units() -> set[type[torch.nn.Module]]:
    """SAM 2's repeated blocks, one FSDP unit each: the Hiera trunk's `MultiScaleBlock`s, the memory attention
    layers and the mask decoder's two-way attention blocks."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock
    from sam2.modeling.memory_attention import MemoryAttentionLayer
    from sam2.modeling.sam.transformer import TwoWayAttentionBlock

    return {MultiScaleBlock, MemoryAttentionLayer, TwoWayAttentionBlock}


def fsdp_strategy() -> FSDPStrategy:
    """Lightning's FSDP (full sharding) with one unit per repeated SAM 2 block (`fsdp_units`); the rest (necks,
    prompt encoder, memory encoder, loose tensors) forms the root unit. Each unit's parameters are gathered just
    before it runs and freed after, so a rank holds 1/world_size of the weights, gradients and AdamW state plus
    one block at a time. Checkpoints are saved as a full state dict on rank 0 (the same `model.<official key>`
    file as DDP writes, which `sam2train export` reads)."""
    return _FSDPStrategy(
        auto_wrap_policy=fsdp_units(), sharding_strategy="FULL_SHARD", state_dict_type="full"
    )


class FSDPGradientClipping(L.Callback):
    """`trainer.gradient_clip_val` under FSDP: the norm over all ranks' gradient shards, by the FSDP root's
    `clip_grad_norm_` (Lightning's FSDP precision plugin has no norm clipping; the per-rank norm would be wrong).
    Runs where Lightning would clip: after backward and unscaling, before the optimizer step."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        trainer.strategy.model.clip_grad_norm_(self.max_norm)


class FSDPShardReport(L.Callback):
    """Prints, when fit starts under FSDP, how many of the parameters the fullest rank holds: about
    1/world_size of them when sharding works."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        strategy = trainer.strategy
        local = sum(p.numel() for p in strategy.model.parameters())
        # on the process's device (NCCL reduces only GPU tensors), in float64 (exact for any parameter count)
        count = torch.tensor(float(local), dtype=torch.float64, device=strategy.root_device)
        most = strategy.reduce(count, reduce_op="max")
        if trainer.is_global_zero:
            total = sum(t for t, _ in getattr(pl_module, "param_report", {}).values())
            print(
                f"sam2train: FSDP over {trainer.world_size} processes: each holds at most {int(most):,} "
                f"of the {total:,} parameters"
            )


def make_callbacks(
    cfg: Config, folder: Path, fsdp: bool = False, resume: ResumePlan | None = None
) -> list[L.Callback]:
    """Best checkpoints and `last.ckpt` (always the latest state) in `folder`/checkpoints, config beside them, the
    run's parent (`resume` from another run's checkpoint), curves at the end, a checkpoint on interrupt, the monitor
    check, validation pictures, early stopping, the progress bar and log interval; under FSDP its clipping and shard
    report; and the non-finite step guard."""
    ck = cfg.checkpoint
    has_val = cfg.data.val_path is not None
    checkpoint = ModelCheckpoint(
        dirpath=folder / "checkpoints",
        filename="epoch{epoch:03d}-step{step:06d}",
        auto_insert_metric_name=False,
        monitor=ck.monitor if has_val else None,  # without validation: keep the latest
        mode=ck.mode,
        save_top_k=ck.save_top_k if has_val else 1,
        save_last=False,  # LastCheckpoint: Lightning's rewrites last.ckpt only with a new best file
        every_n_train_steps=ck.every_n_train_steps,
    )
    cbs: list[L.Callback] = [checkpoint]
    if ck.save_last:
        cbs.append(LastCheckpoint(folder / "checkpoints", ck.every_n_train_steps))
    cbs += [SaveConfig(cfg), RunRecord(resume.parent if resume else None), CurvesAtEnd(), SaveOnInterrupt()]
    if has_val:
        monitors = {"checkpoint.monitor": ck.monitor}
        if cfg.early_stopping.enabled:
            monitors["early_stopping.monitor"] = cfg.early_stopping.monitor
        cbs.append(MonitorCheck(monitors))
    if fsdp:
        cbs.append(FSDPShardReport())
        if cfg.trainer.gradient_clip_val is not None:
            cbs.append(FSDPGradientClipping(cfg.trainer.gradient_clip_val))
    if has_val and cfg.logging.viz_every_n_epochs > 0:
        if fsdp:  # its prediction calls the inner module, whose parameters are sharded under FSDP
            rank_zero_warn(
                "logging.viz_every_n_epochs: validation pictures are not drawn under trainer.strategy=fsdp "
                "(validation metrics are logged as usual); set logging.viz_every_n_epochs=0 to silence this"
            )
        else:
            cbs.append(ValidationPictures(cfg.logging.viz_every_n_epochs, videos=cfg.logging.viz_videos))
    if cfg.early_stopping.enabled and has_val:
        es = cfg.early_stopping
        cbs.append(
            EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)
        )
    if cfg.logging.progress_bar == "rich":
        cbs.append(RunRichProgressBar())
    elif cfg.logging.progress_bar == "tqdm":
        cbs.append(RunTQDMProgressBar())
    cbs.append(LogInterval())
    # last of the hooks before the optimizer step: it judges the gradients after FSDPGradientClipping
    cbs.append(NonFiniteGuard(cfg.trainer.max_bad_steps))
    return cbs


def _quiet_expected_warnings(resume: ResumePlan | None) -> None:
    """Lightning's warnings that say what sam2train does on purpose: a short run's log interval (LogInterval
    lowers it), a monitor not logged yet, a resumed run's non-empty checkpoint folder, and the best-score state
    that a new version (or `validate`) does not take over from the checkpoint's folder."""
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
    )
    # MonitorCheck has made sure at setup that the monitor is logged by validation; a step before the first (or
    # after the last) validation of a run stopped by max_steps mid-epoch has none yet
    warnings.filterwarnings("ignore", message=r"`ModelCheckpoint\(monitor=.*could not find the monitored key")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    if resume is not None:
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def make_trainer(
    cfg: Config, callbacks: list[L.Callback] | None = None, resume: ResumePlan | None = None
) -> L.Trainer:
    """A Trainer for `cfg`: TensorBoard + CSV logs in one run folder, best and last checkpoints (with the config
    inside and beside them), optional early stopping, the configured precision, clipping and accumulation, on
    `trainer.devices` x `trainer.num_nodes` processes (Lightning detects torchrun and SLURM launches).
    Checkpoint files are written atomically, and Ctrl-C or SIGTERM during fit saves a resumable `last.ckpt`.
    `resume` (`plan_resume`): the fit continues from a checkpoint, in its run's folder (`logging.version` is that
    folder: the logs append) or, from another run's checkpoint, in a new version that records it."""
    t = cfg.trainer
    version = run_version(cfg)
    _quiet_expected_warnings(resume)
    same_run = resume is not None and resume.version is not None
    loggers = make_loggers(cfg, version, resume.global_step if same_run and resume else None)
    folder = Path(cfg.logging.root_dir) / cfg.logging.name / version
    strategy = resolve_strategy(cfg)
    fsdp = isinstance(strategy, FSDPStrategy)
    kwargs = {}
    apply_matmul_precision(cfg)  # trainer.matmul_precision (null: high on CUDA)
    for key in ("limit_train_batches", "limit_val_batches"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        gradient_clip_val=None if fsdp else t.gradient_clip_val,  # FSDPGradientClipping clips under FSDP
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval,
        num_sanity_val_steps=t.num_sanity_val_steps,
        deterministic=t.deterministic,
        benchmark=cudnn_benchmark(cfg),
        logger=loggers or False,
        callbacks=[*make_callbacks(cfg, folder, fsdp, resume), *(callbacks or [])],
        default_root_dir=str(folder),
        enable_progress_bar=cfg.logging.progress_bar != "none",
        use_distributed_sampler=False,  # EpochSampler shards across ranks itself
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )
