"""The one reader of weights files: official (`{"model": sd}`), sam2train Lightning (`state_dict` with `model.`
keys, the resolved config under CONFIG_KEY), bare state dicts, safetensors files (a flat state dict, with the
sam2train config as JSON in the header's metadata when `export` wrote it), and transformers SAM 2 folders
(`config.json` + `model.safetensors`, renamed to Meta's keys by `hf_weights`).

`build_model` (model.checkpoint), `sam2train export` (--ckpt), `sam2train predict` (--checkpoint) and the check
before `fit/validate --ckpt` all open their files here, so what counts as a checkpoint, and what its errors say, is
decided once.

A `.pt`/`.ckpt` file is a pickle, and unpickling can run any code the file names. Files are read with torch's
safe unpickler (`weights_only=True`: tensors and plain types only); a file it refuses is an UnsafeCheckpointError
naming the file and the object it needed, unless the caller passes `trust=True` (the user's explicit opt-in for a
file they made themselves). safetensors files are no pickle at all.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sam2train.config import Config, config_from_dict
from sam2train.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    UnsafeCheckpointError,
)
from sam2train.model.hf_weights import hf_folder

log = logging.getLogger("sam2train")

CONFIG_KEY = "sam2train_config"
"""Where a Lightning checkpoint carries its resolved config (also in hyper_parameters['config'])."""


TRUST_FLAG = "--trust-checkpoint"
"""The command-line opt-in to unpickle a file the safe loader refuses (`model.trust_checkpoint` in a config)."""

_SAFETENSORS_HEADER_LIMIT = 100_000_000
"""safetensors' own bound on the JSON header's size: 8 bytes that announce more are not a safetensors file."""


@dataclass
class CheckpointContents:
    """What a checkpoint file holds: SAM 2's weights under official keys and, for a sam2train Lightning
    checkpoint (or a safetensors file `export` wrote), the config tree it was trained with (None for official /
    bare state-dict files).

    `source` names the file in messages: the path, after the command-line flag that named it if any. `kind` is
    `lightning`, `official`, `bare`, `safetensors` or `transformers` (a transformers SAM 2 folder, whose config
    tree holds only the model config and image size of its config.json).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    config_tree: Any | None
    source: str
    kind: str = "official"

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


def read_checkpoint(
    path: str | Path, flag: str | None = None, trust: bool = False, opt_in: str = TRUST_FLAG
) -> CheckpointContents:
    """Open a checkpoint file on the CPU: a safetensors file, or a torch file through the safe unpickler.

    Errors (CheckpointNotFoundError, CheckpointError, UnsafeCheckpointError) name the file and, when given, the
    command-line `flag` that named it. A pickle the safe unpickler refuses is unpickled only with `trust`;
    otherwise the error says to set `opt_in`. A zip-format file is memory-mapped, not read.
    """
    path = Path(path).expanduser()
    source = f"{flag} {path}" if flag else str(path)
    folder = hf_folder(path) if path.exists() else None
    if folder is not None:
        return read_transformers(folder, source)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{flag + ': ' if flag else ''}checkpoint file not found: {path}")
    if is_safetensors(path):
        sd, tree = read_safetensors(path, source)
        return CheckpointContents(path, sd, tree, source, "safetensors")
    obj = load_torch_file(path, source, trust, opt_in)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), dict):
        sd = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        if not sd:
            raise CheckpointError(f"{source}: Lightning checkpoint has no 'model.' keys in its state_dict")
        tree = obj.get(CONFIG_KEY)
        if tree is None:
            tree = (obj.get("hyper_parameters") or {}).get("config")
        return CheckpointContents(path, sd, tree, source, "lightning")
    if isinstance(obj.get("model"), dict):
        return CheckpointContents(path, obj["model"], None, source, "official")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return CheckpointContents(path, obj, None, source, "bare")
    raise CheckpointError(
        f"{source}: not a SAM 2 checkpoint (expected a sam2train Lightning checkpoint, {{'model': "
        f"state_dict}}, a bare state dict or a .safetensors file); top-level keys: {sorted(map(str, obj))[:8]}"
    )


def read_transformers(folder: Path, source: str) -> CheckpointContents:
    """A transformers SAM 2 folder (`model/hf_weights.py`): its weights in Meta's layout, and as config tree the
    official model config and image size its config.json describes (kind `transformers`)."""
    from sam2train.model.hf_weights import read_hf_checkpoint

    hf = read_hf_checkpoint(folder, source)
    tree = {"model": {"config": hf.config, "image_size": hf.image_size}}
    return CheckpointContents(folder, hf.state_dict, tree, source, "transformers")


def load_torch_file(path: Path, source: str, trust: bool = False, opt_in: str = TRUST_FLAG) -> Any:
    """`torch.load` of `path` on the CPU with the safe unpickler (tensors, plain types and the few classes torch
    allows). A file that needs more raises UnsafeCheckpointError (one line: the file, the object it needs, and
    `opt_in`), or, with `trust`, is unpickled in full (which runs whatever code it names). Any other failure is a
    CheckpointError naming `source`."""
    mmap = zipfile.is_zipfile(path)  # legacy-format (non-zip) files cannot be mapped
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            if not trust:
                raise UnsafeCheckpointError(_refusal(source, exc, opt_in)) from None
            log.warning("%s: unpickling in full (trusted with %s)", source, opt_in)
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{source}: not a readable torch checkpoint ({_first_line(exc)})") from exc


def _refusal(source: str, exc: Exception, opt_in: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    needs = f"the object {found.group(1)}" if found else "objects other than tensors and plain types"
    return (
        f"{source}: refused: unpickling this file needs {needs}, which the safe loader does not allow "
        f"(a pickle can run any code when it is loaded); only if you made this file yourself, load it anyway "
        f"with {opt_in}"
    )


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# --------------------------------------------------------------------------------------------- safetensors


def is_safetensors(path: Path) -> bool:
    """True for a `.safetensors` file name or a file that starts as one (a little-endian header length, then
    the header's `{`): a renamed file is still recognised, and a torch file never starts like that."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < _SAFETENSORS_HEADER_LIMIT


def read_safetensors(path: Path, source: str) -> tuple[dict[str, torch.Tensor], Any | None]:
    """The state dict of a safetensors file (memory-mapped) and the sam2train config tree in its metadata
    (None if it has none). No pickle is involved."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            sd = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a readable safetensors file ({_first_line(exc)})") from exc
    if not sd:
        raise CheckpointError(f"{source}: the safetensors file holds no tensors")
    tree = None
    if CONFIG_KEY in metadata:
        try:
            tree = json.loads(metadata[CONFIG_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: metadata '{CONFIG_KEY}' is not JSON ({exc})") from exc
    return sd, tree


def write_safetensors(
    state_dict: dict[str, torch.Tensor], path: Path, config_tree: Any | None = None
) -> None:
    """Write `state_dict` (official keys) as a safetensors file, with `config_tree` as JSON in the metadata under
    CONFIG_KEY when given, so that `read_checkpoint` brings the model config back. Tensors that share memory
    are stored as copies (safetensors stores each tensor once)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage in seen else value
        seen.add(storage)
    metadata = {"format": "pt"}
    if config_tree is not None:
        metadata[CONFIG_KEY] = json.dumps(config_tree)
    save_file(tensors, str(path), metadata=metadata)
