"""What a sam2train checkpoint says about itself, and the check a resume runs before it continues the optimizer.

Every checkpoint records the sam2train version that wrote it (VERSION_KEY) and the checkpoint-format number
(FORMAT_KEY): CHECKPOINT_FORMAT changes when what sam2train stores in a checkpoint changes in a way an older reader
would misread. Checkpoints written before versioning have neither (format 0).

A resume (`fit --ckpt`) restores the optimizer group by group. torch only notices a different number of groups or
of tensors in a group (with a stack trace from deep in Lightning), and otherwise silently keeps the stored
learning rates and weight decays, even when the groups now hold other parameters. `check_optimizer_groups` compares
the stored groups with those the current config builds (`train.optim.param_groups`) before Lightning restores them
and stops with one message that says what differs and how to start from the weights instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sam2train import __version__
from sam2train.errors import CheckpointError

VERSION_KEY = "sam2train_version"
FORMAT_KEY = "sam2train_format"
CHECKPOINT_FORMAT = 1
"""1: the config (CONFIG_KEY), the resume state (RESUME_KEY), the version stamp; everything loads with
`torch.load(weights_only=True)`."""
WEIGHTS_ONLY_HINT = (
    "to start a new run from its weights with a fresh optimizer and schedule, add --ckpt-weights-only "
    "(the same as model.checkpoint=FILE)"
)


def stamp_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Record this sam2train's version and checkpoint format in a checkpoint being saved."""
    checkpoint[VERSION_KEY] = __version__
    checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT


def written_by(checkpoint: dict[str, Any]) -> str:
    """`sam2train 0.1.0 (checkpoint format 1)`, or what is known of a checkpoint from before versioning."""
    if VERSION_KEY not in checkpoint:
        return "a sam2train from before checkpoints recorded their version (format 0)"
    return f"sam2train {checkpoint[VERSION_KEY]} (checkpoint format {checkpoint.get(FORMAT_KEY, 0)})"


def check_format(checkpoint: dict[str, Any], source: str) -> None:
    """CheckpointError when a newer sam2train wrote `checkpoint` in a format this one does not know."""
    found = checkpoint.get(FORMAT_KEY, 0)
    if isinstance(found, int) and found > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{source}: written by {written_by(checkpoint)}; this sam2train {__version__} reads checkpoint "
            f"formats up to {CHECKPOINT_FORMAT}: upgrade sam2train to resume it"
        )


def check_optimizer_groups(checkpoint: dict[str, Any], groups: Sequence[dict[str, Any]], source: str) -> None:
    """Before a resume restores the optimizer: CheckpointError naming `source` when the stored parameter groups
    differ from `groups` (what the current config builds: dicts with `name`, `params`, `lr`, `weight_decay`) in
    count, names, number of tensors, initial learning rate or weight decay; or when there is no optimizer state
    (a weights-only checkpoint)."""
    states = checkpoint.get("optimizer_states")
    if not states:
        raise CheckpointError(
            f"{source}: holds no optimizer state (a weights-only checkpoint), so it cannot be resumed; "
            f"{WEIGHTS_ONLY_HINT}"
        )
    stored = states[0].get("param_groups", []) if isinstance(states[0], dict) else []
    differences = group_differences(stored, groups)
    if differences:
        raise CheckpointError(
            f"{source}: its optimizer parameter groups differ from those this config builds "
            f"({'; '.join(differences)}). It was written by {written_by(checkpoint)}, this is sam2train "
            f"{__version__}; a resume needs the same model.trainable_modules and optimizer.* as the run that "
            f"wrote it. {WEIGHTS_ONLY_HINT[0].upper()}{WEIGHTS_ONLY_HINT[1:]}"
        )


def group_differences(stored: Sequence[dict[str, Any]], groups: Sequence[dict[str, Any]]) -> list[str]:
    """What differs between the stored optimizer groups and the current ones, one phrase each (at most 4 groups
    are described)."""
    if len(stored) != len(groups):
        return [
            f"{len(stored)} groups in the checkpoint ({_names(stored)}), {len(groups)} now ({_names(groups)})"
        ]
    out = []
    for i, (old, new) in enumerate(zip(stored, groups)):
        what = []
        if "name" in old and old["name"] != new["name"]:
            what.append(f"name '{old['name']}' -> '{new['name']}'")
        if len(old.get("params", [])) != len(new["params"]):
            what.append(f"{len(old.get('params', []))} -> {len(new['params'])} tensors")
        lr = old.get("initial_lr")  # the lr the group was built with (the schedule changes "lr")
        if lr is not None and not math.isclose(lr, new["lr"], rel_tol=1e-9):
            what.append(f"lr {lr:.3g} -> {new['lr']:.3g}")
        wd = old.get("weight_decay")
        if wd is not None and not math.isclose(wd, new["weight_decay"], rel_tol=1e-9, abs_tol=1e-12):
            what.append(f"weight_decay {wd:.3g} -> {new['weight_decay']:.3g}")
        if what:
            out.append(f"group {i} '{new['name']}': {', '.join(what)}")
    return out[:4] + ([f"{len(out) - 4} more groups"] if len(out) > 4 else [])


def _names(groups: Sequence[dict[str, Any]]) -> str:
    names = [f"{g.get('name', '?')}: {len(g.get('params', []))} tensors" for g in groups[:4]]
    return ", ".join(names) + (", ..." if len(groups) > 4 else "")
