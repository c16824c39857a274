"""Optimizer parameter groups and learning-rate schedules, after Meta's SAM 2 fine-tuning recipe.

Meta's `sam2.1_hiera_b+_MOSE_finetune.yaml` trains the image encoder at its own lr (`vision_lr`), decays that lr
layer by layer down the Hiera trunk (`training.optimizer.layer_decay_param_modifier`, 0.9, with `*pos_embed*`
kept at scale 1), drops weight decay on biases and LayerNorms, and anneals each group's lr with a cosine from its
initial value to a tenth of it. `param_groups` reproduces the groups from `OptimizerConfig`; `build_scheduler`
gives the schedule from `SchedulerConfig`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, SequentialLR, StepLR

from sam2train.config import OptimizerConfig, SchedulerConfig
from sam2train.errors import UserError

log = logging.getLogger("sam2train")

ENCODER = "image_encoder."
TRUNK = "image_encoder.trunk."
_BLOCK = re.compile(r"\.blocks\.(\d+)\.")
WARMUP_START_FACTOR = 1e-3
"""Warmup starts at this fraction of each group's lr and rises linearly to it."""


def trunk_lr_scale(name: str, num_blocks: int, decay: float) -> tuple[str | None, float]:
    """The layer-decay label and lr scale of the SAM2Base parameter `name`, as Meta's
    `layer_decay_param_modifier(apply_to="image_encoder.trunk", overrides=[{"pattern": "*pos_embed*",
    "value": 1.0}])` gives them with Hiera's `get_layer_id`.

    Meta numbers the trunk's layers 0 (patch embedding) to L + 1 (L = num_blocks): block i is layer i + 1, and
    layer k gets `decay ** (L + 1 - k)`, so block i gets `decay ** (L - i)` (the last block `decay`) and the patch
    embedding `decay ** (L + 1)`. Other trunk parameters (`rel_pos`, none in SAM 2's Hiera) are layer L + 1, scale 1.
    Hiera also puts `pos_embed` and `pos_embed_window` on layer 0, but the recipe overrides `*pos_embed*` to scale 1
    (the encoder's own lr), and so do we. Parameters outside the trunk get scale 1. The label is None at scale 1.
    """
    if decay == 1.0 or not name.startswith(TRUNK) or "rel_pos" in name or "pos_embed" in name:
        return None, 1.0
    if "patch_embed" in name:
        return "image_encoder.trunk.patch_embed", decay ** (num_blocks + 1)
    block = _BLOCK.search(name)
    if block is None:
        return None, 1.0
    i = int(block.group(1))
    return f"image_encoder.trunk.blocks.{i}", decay ** (num_blocks - i)


def norm_module_types() -> tuple[type[nn.Module], ...]:
    """Normalisation layers whose parameters `no_weight_decay: [norm]` exempts, whatever their names."""
    from sam2.modeling.sam2_utils import LayerNorm2d  # importing sam2 initialises Hydra: not at import time

    types: tuple[type[nn.Module], ...] = (
        nn.LayerNorm,
        nn.GroupNorm,
        nn.modules.batchnorm._NormBase,
        LayerNorm2d,
    )
    return (*types, nn.RMSNorm) if hasattr(nn, "RMSNorm") else types


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the trainable parameters of `model` (a SAM2Base; names as its own).

    Encoder parameters (`image_encoder.*`) train at `cfg.image_encoder_lr` (null: `cfg.lr`) times their Hiera
    layer-decay scale (`trunk_lr_scale`), the rest at `cfg.lr`. Parameters whose names contain an entry of
    `cfg.no_weight_decay` (with `norm`: also every parameter of a normalisation layer) get weight decay 0, the rest
    `cfg.weight_decay`. Parameters with the same (lr, weight decay) share a group; each group is a dict with
    `name`, `params`, `lr` and `weight_decay`. Groups come in order of their first parameter, non-encoder
    parameters first, so group 0 follows `optimizer.lr` whenever anything outside the encoder trains.
    """
    enc_lr = cfg.image_encoder_lr if cfg.image_encoder_lr is not None else cfg.lr
    num_blocks = _num_trunk_blocks(model)
    exempt = set(cfg.no_weight_decay)
    norm_params: set[nn.Parameter] = set()
    if "norm" in exempt:
        norm_types = norm_module_types()
        norm_params = {
            p for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)
        }
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise UserError("model.trainable_modules leaves no trainable parameter")
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    # encoder parameters last (a stable sort: model order otherwise), so group 0 holds the base lr
    for name, param in sorted(named, key=lambda item: item[0].startswith(ENCODER)):
        if name.startswith(ENCODER):
            label, scale = trunk_lr_scale(name, num_blocks, cfg.layer_decay)
            label, lr = label or "image_encoder", enc_lr * scale
        else:
            label, lr = "base", cfg.lr
        no_wd = param in norm_params or any(key in name for key in exempt)
        wd = 0.0 if no_wd else cfg.weight_decay
        group = groups.setdefault((lr, wd), {"labels": [], "params": [], "lr": lr, "weight_decay": wd})
        if label not in group["labels"]:
            group["labels"].append(label)
        group["params"].append(param)
    out = []
    for group in groups.values():
        suffix = "/no_wd" if group["weight_decay"] == 0 and cfg.weight_decay > 0 else ""
        name = "+".join(group.pop("labels")) + suffix
        out.append({"name": name, **group})
    return out


def format_param_groups(groups: list[dict[str, Any]]) -> str:
    """One line per group: name, parameter count (tensors), lr and weight decay."""
    lines = []
    for g in groups:
        numel = sum(p.numel() for p in g["params"])
        lines.append(
            f"  {g['name']}: {numel:,} params ({len(g['params'])} tensors), lr {g['lr']:.3g}, "
            f"weight_decay {g['weight_decay']:.3g}"
        )
    return "\n".join(lines)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or Adam (with `cfg.betas`) over `param_groups(model, cfg)`, fused when `fused` (`gpu.use_fused_optimizer`
    decides; torch refusing it is a ConfigError naming `optimizer.fused`); logs the groups at info level."""
    from sam2train.train.gpu import fused_refused

    groups = param_groups(model, cfg)
    log.info("optimizer %s, %d parameter groups:\n%s", cfg.type, len(groups), format_param_groups(groups))
    cls = torch.optim.AdamW if cfg.type == "AdamW" else torch.optim.Adam
    extra = {"fused": True} if fused else {}
    try:
        return cls(
            groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.betas[0], cfg.betas[1]), **extra
        )
    except RuntimeError as exc:
        if not fused:
            raise
        raise fused_refused(cfg.type, groups[0]["params"][0].device.type, exc) from exc


def schedule_per_step(cfg: SchedulerConfig) -> bool:
    """True when the schedule steps every optimizer step: `interval: step`, or any warmup (which is in steps)."""
    return cfg.interval == "step" or cfg.warmup_steps > 0


def needs_steps_per_epoch(cfg: SchedulerConfig) -> bool:
    """True when `build_scheduler` converts epoch lengths (T_max, step_size) to optimizer steps: an enabled
    schedule with `interval: epoch` that runs per step because of warmup."""
    return cfg.enabled and cfg.interval == "epoch" and schedule_per_step(cfg)


def trainer_steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps in one epoch of `trainer` (from its estimated stepping batches and max_epochs)."""
    total = trainer.estimated_stepping_batches
    if trainer.max_epochs and trainer.max_epochs > 0 and math.isfinite(total):
        return max(1, int(total // trainer.max_epochs))
    return max(1, int(total))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, steps_per_epoch: int
) -> dict[str, Any] | None:
    """The Lightning `lr_scheduler` entry (`{"scheduler", "interval"}`) for `cfg`, or None when disabled.

    Linear warmup over `cfg.warmup_steps` optimizer steps (from `WARMUP_START_FACTOR` of each group's lr), then
    `main_scheduler`. With warmup the whole schedule runs per step, and with `interval: epoch` its lengths are
    converted with `steps_per_epoch` (read only when `needs_steps_per_epoch(cfg)`).
    """
    if not cfg.enabled:
        return None
    unit = steps_per_epoch if needs_steps_per_epoch(cfg) else 1
    scheduler = main_scheduler(optimizer, cfg, unit)
    if cfg.warmup_steps > 0:
        warmup = LinearLR(
            optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=cfg.warmup_steps
        )
        scheduler = SequentialLR(optimizer, [warmup, scheduler], milestones=[cfg.warmup_steps])
    return {"scheduler": scheduler, "interval": "step" if schedule_per_step(cfg) else "epoch"}


def main_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, unit: int) -> LRScheduler:
    """The schedule after warmup; `unit` scheduler steps make one of `cfg`'s intervals.

    Cosine: with `eta_min_ratio` each group anneals from its own lr to `eta_min_ratio` times it over
    `T_max * unit` steps and then stays there (Meta's recipe: 0.1); otherwise torch's CosineAnnealingLR to the
    absolute `eta_min` for every group. StepLR multiplies every group's lr by `gamma` each `step_size * unit`.
    """
    if cfg.type == "StepLR":
        return StepLR(optimizer, step_size=cfg.step_size * unit, gamma=cfg.gamma)
    total = cfg.T_max * unit
    if cfg.eta_min_ratio is not None:
        return LambdaLR(optimizer, cosine_factor(total, cfg.eta_min_ratio))
    lowest = min(g["lr"] for g in optimizer.param_groups)
    if cfg.eta_min > lowest:
        log.warning(
            "scheduler.eta_min=%g is above the lowest group lr %g: that group's lr rises over the cosine; "
            "scheduler.eta_min_ratio sets a floor relative to each group's lr",
            cfg.eta_min,
            lowest,
        )
    return CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.eta_min)


def cosine_factor(total: int, ratio: float) -> Callable[[int], float]:
    """Step -> lr factor: a half cosine from 1 at step 0 to `ratio` at step `total`, then `ratio`."""

    def factor(step: int) -> float:
        t = min(step, total) / total
        return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _num_trunk_blocks(model: nn.Module) -> int:
    """L, the number of Hiera blocks (Meta's `trunk.get_num_layers()`); 0 without a Hiera trunk."""
    try:
        return len(model.get_submodule("image_encoder.trunk.blocks"))
    except AttributeError:
        return 0
