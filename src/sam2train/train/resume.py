"""What a resumed run needs beyond Lightning's own state: the global RNG states (torch, numpy, python, CUDA), so
a resumed run draws the same dropout and augmentations as an uninterrupted one, and the validation history and best
score, so its summary covers the whole run; and where a resumed run goes (`plan_resume`): the run folder of its
checkpoint, continued, or a new version that records the checkpoint it started from.

Stored as types a `torch.load(..., weights_only=True)` accepts. The step guard's counts travel as the
`NonFiniteGuard` callback's state (train/guards.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2train.errors import ConfigError

__all__ = [
    "RESUME_KEY",
    "ResumePlan",
    "plan_resume",
    "restore_resume_state",
    "rng_states",
    "save_resume_state",
    "set_rng_states",
]

RESUME_KEY = "sam2train_resume"
"""Where a checkpoint carries the resume state (`{"rng": rng_states(), "val_history": [...], "best_score": x}`)."""


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


def save_resume_state(
    checkpoint: dict[str, Any], val_history: list[dict[str, float]] | None = None, best: float | None = None
) -> None:
    """Add the resume state to a checkpoint being saved: the RNG states, and the run's validation history and best
    score of `checkpoint.monitor` so far."""
    checkpoint[RESUME_KEY] = {"rng": rng_states(), "val_history": list(val_history or []), "best_score": best}


def restore_resume_state(checkpoint: dict[str, Any], fitting: bool) -> dict[str, Any] | None:
    """Restore a loaded checkpoint's RNG states when `fitting` continues from it (validation or prediction from a
    checkpoint leaves the RNGs alone). Returns the resume state (None for a checkpoint without one, which is left as
    it is): its `val_history` and `best_score` are for the module to take over."""
    resume = checkpoint.get(RESUME_KEY)
    if resume is not None and fitting:
        set_rng_states(resume["rng"])
    return resume


@dataclass(frozen=True)
class ResumePlan:
    """Where `fit --ckpt` continues: the checkpoint, its global step, and the run folder name to continue in
    (`version`), or None when the checkpoint belongs to another run and a new version starts (its `parent`)."""

    checkpoint: Path
    global_step: int
    version: str | None

    @property
    def parent(self) -> dict[str, Any] | None:
        """What a new version records of the checkpoint it started from (None: the run itself continues)."""
        if self.version is not None:
            return None
        return {"checkpoint": str(self.checkpoint), "global_step": self.global_step}


def plan_resume(
    root_dir: str, name: str, version: str | None, checkpoint: str | Path, step: int
) -> ResumePlan:
    """The run continues in its own folder when the checkpoint lies in `<root_dir>/<name>/<v>/checkpoints/` and
    `logging.version` (`version`) is unset or `v`; any other checkpoint starts a new version that records it."""
    path = Path(checkpoint).expanduser().resolve()
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    base = (Path(root_dir) / name).expanduser().resolve()
    same = run is not None and run.parent == base and version in (None, run.name)
    return ResumePlan(path, step, run.name if same and run is not None else None)


MODEL_KEYS_FROM_CHECKPOINT = ("config", "image_size", "mask_prompt_passthrough", "adapters")
"""The model settings that make a trained network what it is: validation takes them from the checkpoint."""


def check_model_settings(stored: Any, given: Any, source: str, overridden: set[str] = frozenset()) -> None:
    """ConfigError naming the first of MODEL_KEYS_FROM_CHECKPOINT where `given` (a ModelConfig from `source`)
    differs from `stored` (the checkpoint's), unless a dotted override in `overridden` sets it on purpose."""
    for key in MODEL_KEYS_FROM_CHECKPOINT:
        full = f"model.{key}"
        if any(o == full or o.startswith(full + ".") for o in overridden):
            continue
        trained, asked = getattr(stored, key), getattr(given, key)
        if trained != asked:
            raise ConfigError(
                f"config key '{full}': {source} says {asked!r}, the checkpoint was trained with {trained!r}; "
                f"the model settings come from the checkpoint: leave {full} out of the config (or run "
                f"validate without --config), or set it on the command line ({full}=...) to use another value"
            )
