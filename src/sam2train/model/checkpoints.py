"""The one reader of weights files: official (`{"model": sd}`), sam2train Lightning (`state_dict` with `model.`
keys, the resolved config under CONFIG_KEY) and bare state dicts.

`build_model` (model.checkpoint), `sam2train export` (--ckpt) and `sam2train predict` (--checkpoint) all open
their files here, so what counts as a checkpoint, and what its errors say, is decided once.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sam2train.config import Config, config_from_dict
from sam2train.errors import CheckpointError, CheckpointNotFoundError, ConfigError

CONFIG_KEY = "sam2train_config"
"""Where a Lightning checkpoint carries its resolved config (also in hyper_parameters['config'])."""


@dataclass
class CheckpointContents:
    """What a checkpoint file holds: SAM 2's weights under official keys and, for a sam2train Lightning
    checkpoint, the config tree it was trained with (None for official / bare state-dict files).

    `source` names the file in messages: the path, after the command-line flag that named it if any.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    config_tree: Any | None
    source: str

    def config(self) -> Config | None:
        """The stored config, validated (ConfigError naming `source` when it no longer loads); None if none."""
        if self.config_tree is None:
            return None
        try:
            return config_from_dict(self.config_tree)
        except ConfigError as exc:
            raise ConfigError(
                f"{self.source}: the config stored in the checkpoint is invalid: {exc}"
            ) from exc


def read_checkpoint(path: str | Path, flag: str | None = None) -> CheckpointContents:
    """Open a checkpoint file on the CPU. Errors (CheckpointNotFoundError, CheckpointError) name the file and,
    when given, the command-line `flag` that named it. A zip-format file is memory-mapped, not read."""
    path = Path(path).expanduser()
    source = f"{flag} {path}" if flag else str(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{flag + ': ' if flag else ''}checkpoint file not found: {path}")
    obj = _load(path, source)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), dict):
        sd = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        if not sd:
            raise CheckpointError(f"{source}: Lightning checkpoint has no 'model.' keys in its state_dict")
        tree = obj.get(CONFIG_KEY)
        if tree is None:
            tree = (obj.get("hyper_parameters") or {}).get("config")
        return CheckpointContents(path, sd, tree, source)
    if isinstance(obj.get("model"), dict):
        return CheckpointContents(path, obj["model"], None, source)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return CheckpointContents(path, obj, None, source)
    raise CheckpointError(
        f"{source}: not a SAM 2 checkpoint (expected a sam2train Lightning checkpoint, {{'model': "
        f"state_dict}} or a bare state dict); top-level keys: {sorted(map(str, obj))[:8]}"
    )


def _load(path: Path, source: str) -> Any:
    mmap = zipfile.is_zipfile(path)  # legacy-format (non-zip) files cannot be mapped
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            # Lightning pickles objects (hyper-parameters, callback states) that the safe unpickler refuses;
            # the user named this file as their own checkpoint.
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"{source}: not a readable torch checkpoint ({exc})") from exc
