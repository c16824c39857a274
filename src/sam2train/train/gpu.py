"""The GPU settings a training run applies: fused Adam/AdamW (`optimizer.fused`), TF32 matrix products
(`trainer.matmul_precision`) and cuDNN autotuning (`trainer.cudnn_benchmark`). Each key's null picks what pays on
the device in use; an explicit value is applied as given, or refused with a ConfigError naming the key."""

from __future__ import annotations

import logging

import torch

from sam2train.config import Config
from sam2train.errors import ConfigError

log = logging.getLogger("sam2train")

__all__ = ["apply_matmul_precision", "cudnn_benchmark", "fused_refused", "use_cuda", "use_fused_optimizer"]


def use_cuda(accelerator: str) -> bool:
    """Whether `trainer.accelerator` puts the run on a CUDA GPU here (as `resolve_precision` decides)."""
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def use_fused_optimizer(cfg: Config, device_type: str) -> bool:
    """`optimizer.fused` for parameters on `device_type`: null = fused on CUDA (one kernel for every parameter's
    update instead of several per tensor), except under 16-mixed with gradient clipping; true = fused wherever
    torch has the kernel (CUDA; the CPU too in current torch); false = torch's default (foreach).

    A fused optimizer unscales the gradients inside its own step, so under 16-mixed (a gradient scaler) Lightning
    cannot clip them first: true there is a ConfigError, null keeps it off."""
    fused, precision = cfg.optimizer.fused, cfg.trainer.precision
    if precision == "auto" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        precision = "16-mixed"  # what `auto` gives there
    scaled_clipping = precision in ("16-mixed", "16") and cfg.trainer.gradient_clip_val is not None
    if fused is None:
        return device_type == "cuda" and not scaled_clipping
    if fused and scaled_clipping:
        raise ConfigError(
            "config key 'optimizer.fused': a fused optimizer unscales gradients inside its step, so Lightning "
            "cannot clip them under trainer.precision=16-mixed; use bf16-mixed, set trainer.gradient_clip_val: "
            "null, or optimizer.fused: false"
        )
    return bool(fused)


def fused_refused(optimizer_type: str, device_type: str, exc: Exception) -> ConfigError:
    """The ConfigError for torch refusing `fused=True` (its reason appended)."""
    return ConfigError(
        f"config key 'optimizer.fused': torch has no fused {optimizer_type} for parameters on {device_type} "
        f"({str(exc).splitlines()[0][:200]}); set optimizer.fused: null or false"
    )


def apply_matmul_precision(cfg: Config) -> str | None:
    """`trainer.matmul_precision` through torch.set_float32_matmul_precision: null = `high` on CUDA (float32
    matrix products and convolutions in TF32 on Ampere and later: about 8x the FLOP/s, 10 mantissa bits), the
    CPU left as it is. Returns what was set (None: nothing)."""
    value = cfg.trainer.matmul_precision
    if value is None and use_cuda(cfg.trainer.accelerator):
        value = "high"
    if value is not None:
        torch.set_float32_matmul_precision(value)
        if use_cuda(cfg.trainer.accelerator):
            torch.backends.cudnn.allow_tf32 = value != "highest"
    return value


def cudnn_benchmark(cfg: Config) -> bool | None:
    """`trainer.cudnn_benchmark` for Lightning's `benchmark`: null = on on CUDA when the input sizes are fixed,
    off otherwise. cuDNN then times its convolution algorithms on each new input shape and keeps the fastest,
    which pays when few shapes recur. Training clips are always [B, data.clip_length, 3, S, S] (S =
    model.image_size); what varies is the number of objects, bounded by `data.max_objects` (null: any count,
    so every new count would be re-timed). So null = on when CUDA is in use, `data.max_objects` is set and
    `trainer.deterministic` is off (autotuning picks algorithms by timing, which is not reproducible)."""
    value = cfg.trainer.cudnn_benchmark
    if value is None:
        fixed = cfg.data.max_objects is not None
        return use_cuda(cfg.trainer.accelerator) and fixed and not cfg.trainer.deterministic
    return value
