"""What a resumed run needs beyond Lightning's own state: the global RNG states (torch, numpy, python, CUDA), so
a resumed run draws the same dropout and augmentations as an uninterrupted one.

Stored as types a `torch.load(..., weights_only=True)` accepts. The step guard's counts travel as the
`NonFiniteGuard` callback's state (train/guards.py).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["RESUME_KEY", "restore_resume_state", "rng_states", "save_resume_state", "set_rng_states"]

RESUME_KEY = "sam2train_resume"
"""Where a checkpoint carries the resume state (`{"rng": rng_states()}`)."""


def rng_states() -> dict[str, Any]:
    """The global RNG states, as types a `weights_only` checkpoint load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the global RNG states `rng_states` returned (the CUDA ones only on as many devices)."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_resume_state(checkpoint: dict[str, Any]) -> None:
    """Add the resume state to a checkpoint being saved."""
    checkpoint[RESUME_KEY] = {"rng": rng_states()}


def restore_resume_state(checkpoint: dict[str, Any], fitting: bool) -> None:
    """Restore a loaded checkpoint's resume state when `fitting` continues from it (validation or prediction
    from a checkpoint leaves the RNGs alone). A checkpoint without one is left as it is."""
    resume = checkpoint.get(RESUME_KEY)
    if resume is not None and fitting:
        set_rng_states(resume["rng"])
