"""LoRA adapters on SAM 2 through `peft`: where they go, what trains, merging, and the adapter files.

`add_adapters(model, cfg)` injects peft's LoRA layers into a `SAM2Base` in place (peft's `LoraModel`, the tuner
behind `inject_adapter_in_model`): the model stays a `SAM2Base`, so the video pass, checkpointing, the feature
cache and DDP see the same modules, and a wrapped layer's weights move to `<layer>.base_layer.*` beside
`<layer>.lora_A.default.weight` / `lora_B`. Lightning checkpoints hold those names; `merge_adapters` (peft's
`merge_and_unload`) folds the adapters back into plain layers with Meta's key names for `export`.

Adapter files (`export --adapters-only`) are peft's format: a folder with `adapter_config.json` and
`adapter_model.safetensors` (keys `base_model.model.<module>.lora_A.weight`, as `PeftModel.save_pretrained`
writes them), plus `trained_modules.safetensors` with the weights of `trainable_modules` that trained fully. The
metadata names the model config, the image size and the base weights' identity (a SHA-256 of every weight the
folder does not hold), checked when the folder is loaded onto a base.

peft (and the transformers it imports, several seconds) is imported inside functions: only adapter runs pay.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sam2train.config import ADAPTER_GROUPS, AdapterConfig, ModelConfig
from sam2train.config.sections import closest, is_group_name
from sam2train.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from peft import LoraModel

ADAPTER_NAME = "default"
WEIGHTS_FILE = "adapter_model.safetensors"
TRAINED_FILE = "trained_modules.safetensors"
PEFT_PREFIX = "base_model.model."
"""The key prefix `PeftModel.save_pretrained` writes (the adapted model sits at `PeftModel.base_model.model`)."""

GROUP_PATTERNS: dict[str, str] = {
    "image_encoder": r"image_encoder\.trunk\.blocks\.\d+\.(attn|mlp)\..+",
    "memory_attention": r"memory_attention\.layers\.\d+\.(self_attn|cross_attn_image)\..+",
    "memory_encoder": r"memory_encoder\..+",
    "sam_mask_decoder": r"sam_mask_decoder\.transformer\.(layers\.\d+\.)?\w*attn\w*\..+",
}
"""Adapter group -> regular expression (full match) over module names; of the matches, `nn.Linear` and ungrouped
`nn.Conv2d` layers get adapters (the memory encoder's depthwise convolutions do not)."""
assert set(GROUP_PATTERNS) == set(ADAPTER_GROUPS)


def is_adapter_parameter(name: str) -> bool:
    """Whether the parameter (or state-dict key) `name` belongs to a LoRA adapter."""
    return ".lora_" in name


def base_key(name: str) -> str:
    """The key `name` has in the plain model: peft's `.base_layer` level removed."""
    return name.replace(".base_layer.", ".")


# --------------------------------------------------------------------------------------------- injecting


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def target_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the modules `targets` (group names or module-name patterns) put adapters on, in model order.

    Raises ConfigError naming an unknown group, a pattern that is not a regular expression, or a target that
    matches no layer."""
    modules = {n: m for n, m in model.named_modules() if n}
    names = list(modules)
    chosen: set[str] = set()
    for i, target in enumerate(targets):
        key = f"model.adapters.targets[{i}]"
        if is_group_name(target):
            if target not in GROUP_PATTERNS:
                raise ConfigError(
                    f"config key '{key}': unknown adapter group '{target}'; valid: {list(GROUP_PATTERNS)}."
                    f"{closest(target, list(GROUP_PATTERNS))}"
                )
            pattern, only_adaptable = GROUP_PATTERNS[target], True
        else:
            pattern, only_adaptable = target, False  # a user's pattern: peft says what it cannot adapt
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"config key '{key}': '{target}' is not a regular expression: {exc}") from None
        hits = [n for n in names if regex.fullmatch(n) and (not only_adaptable or _adaptable(modules[n]))]
        if not hits:
            raise ConfigError(f"config key '{key}': '{target}' matches no layer of this SAM 2")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def lora_config(model: nn.Module, cfg: AdapterConfig) -> Any:
    """peft's `LoraConfig` for `cfg` on `model` (explicit module names as its `target_modules`)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError(
            "config key 'model.adapters.type': LoRA adapters need the peft library: pip install 'sam2train[lora]'"
        ) from None

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules(model, cfg.targets),
        bias="none",
    )


def add_adapters(model: nn.Module, cfg: AdapterConfig) -> LoraModel:
    """Inject LoRA layers as `cfg` says into `model`, in place; returns peft's tuner over it (for merging).

    peft leaves only the adapters trainable (`apply_adapters` adds the fully trained groups back)."""
    from peft import LoraModel

    config = lora_config(model, cfg)
    try:
        return LoraModel(model, config, ADAPTER_NAME)
    except ValueError as exc:  # peft refuses a layer type it cannot adapt
        raise ConfigError(f"config key 'model.adapters.targets': {exc}") from None


def apply_adapters(model: nn.Module, cfg: ModelConfig, load_weights: bool = True) -> LoraModel:
    """Adapters on a model already frozen outside `cfg.trainable_modules`: injected, trainable together with
    those groups, started from `cfg.adapters.path` when given (and `load_weights`)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    tuner = add_adapters(model, cfg.adapters)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_parameter(name) or base_key(name) in trainable)
    if cfg.cache_features and any(p.requires_grad for p in model.image_encoder.parameters()):
        raise ConfigError(
            "config key 'model.cache_features': cached features need an image encoder without adapters, but "
            "model.adapters.targets puts adapters on it; set model.cache_features: false"
        )
    if load_weights and cfg.adapters.path is not None:
        load_adapter_weights(model, cfg.adapters.path, cfg)
    return tuner


def merge_adapters(tuner: LoraModel) -> nn.Module:
    """The adapted model with each adapter folded into its base layer (peft's `merge_and_unload`): plain
    modules, Meta's key names, the same outputs."""
    return tuner.merge_and_unload()


# --------------------------------------------------------------------------------------------- adapter files


def base_identity(state_dict: dict[str, torch.Tensor], held: set[str]) -> str:
    """SHA-256 over the base weights of `state_dict` (plain keys) that an adapter folder does not hold (`held`):
    the weights the folder must be loaded onto."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state_dict if k not in held and not is_adapter_parameter(k)):
        tensor = state_dict[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def adapter_tensors(
    model: nn.Module, trained: Callable[[str], bool]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the adapters in peft's saved form, the weights that trained fully under plain keys) of an adapted model;
    `trained(plain name)` says which base weights trained fully (`model.trainable_modules`)."""
    from peft.utils import get_peft_model_state_dict

    lora = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    full = {
        base_key(n): p.detach()
        for n, p in model.named_parameters()
        if not is_adapter_parameter(n) and trained(base_key(n))
    }
    return {PEFT_PREFIX + k: v for k, v in lora.items()}, full


def save_adapters(
    model: nn.Module,
    cfg: ModelConfig,
    out: str | Path,
    trained: Callable[[str], bool],
    base_source: str | None,
) -> Path:
    """Write the adapter folder of an adapted `model` (trained as `cfg` says; `trained` as in `adapter_tensors`)
    to `out`; `base_source` names the base weights in the metadata (the identity hash is what loading checks)."""
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    lora, full = adapter_tensors(model, trained)
    plain = {base_key(k): v for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "sam2train_adapters": json.dumps(
            {
                "type": cfg.adapters.type,
                "r": cfg.adapters.r,
                "alpha": cfg.adapters.alpha,
                "dropout": cfg.adapters.dropout,
                "targets": list(cfg.adapters.targets),
            }
        ),
        "model_config": cfg.config,
        "image_size": str(cfg.image_size),
        "base_checkpoint": base_source or "",
        "base_sha256": base_identity(plain, set(full)),
    }
    save_file({k: v.contiguous() for k, v in lora.items()}, out / WEIGHTS_FILE, metadata=meta)
    if full:
        save_file({k: v.contiguous() for k, v in full.items()}, out / TRAINED_FILE, metadata=meta)
    config = lora_config(model, AdapterConfig(**json.loads(meta["sam2train_adapters"])))
    config.base_model_name_or_path = base_source
    config.save_pretrained(str(out))
    return out


def read_adapter_folder(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """(adapter tensors with peft's saved keys, fully trained weights, metadata) of an adapter folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{folder}: not an adapter folder (no {WEIGHTS_FILE}; write one with `export --adapters-only`)"
        )
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "sam2train_adapters" not in meta:
        raise CheckpointError(
            f"{weights}: no sam2train metadata (not written by `sam2train export --adapters-only`)"
        )
    trained_file = folder / TRAINED_FILE
    trained = load_file(str(trained_file)) if trained_file.is_file() else {}
    return load_file(str(weights)), trained, meta


def adapter_config_of(path: str | Path) -> AdapterConfig:
    """The `model.adapters` section an adapter folder was trained with (`path` set to the folder)."""
    meta = read_adapter_folder(path)[2]
    return AdapterConfig(**json.loads(meta["sam2train_adapters"]), path=str(path))


def load_adapter_weights(model: nn.Module, path: str | Path, cfg: ModelConfig) -> None:
    """Load an adapter folder into `model`, adapted as the folder's own config says and holding the base weights.

    Raises CheckpointError when the folder was made for other base weights or another architecture."""
    from peft.utils import set_peft_model_state_dict

    lora, trained, meta = read_adapter_folder(path)
    plain = {base_key(k): v for k, v in model.state_dict().items()}
    if base_identity(plain, set(trained)) != meta["base_sha256"]:
        raise CheckpointError(
            f"{path}: these adapters were trained on other base weights "
            f"('{meta['base_checkpoint'] or 'unnamed'}') than model.checkpoint '{cfg.checkpoint}'"
        )
    stripped = {k.removeprefix(PEFT_PREFIX): v for k, v in lora.items()}
    result = set_peft_model_state_dict(model, stripped, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if is_adapter_parameter(k)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: adapters do not fit model.adapters ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(result.unexpected_keys)} unexpected, e.g. {list(result.unexpected_keys)[:2]})"
        )
    params = {base_key(n): p for n, p in model.named_parameters()}
    unknown = sorted(set(trained) - set(params))
    if unknown:
        raise CheckpointError(f"{path}: {TRAINED_FILE} holds weights this SAM 2 lacks, e.g. {unknown[:3]}")
    with torch.no_grad():
        for key, value in trained.items():
            params[key].copy_(value)


def with_adapter_folder(model: nn.Module, cfg: ModelConfig, path: str | Path) -> nn.Module:
    """A base `model` (plain layers, base weights loaded) with the adapter folder at `path` merged in."""
    adapters = adapter_config_of(path)
    tuner = add_adapters(model, adapters)
    load_adapter_weights(model, path, cfg)
    return merge_adapters(tuner)


def adapters_for(model: nn.Module, cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> LoraModel | None:
    """Adapters as `cfg.adapters` says on a freshly built `model` when `state_dict` (weights to load into it)
    holds adapter weights (a Lightning checkpoint of an adapter run); None (nothing done) otherwise, e.g. for an
    exported, merged file."""
    if cfg.adapters.type is None or not any(is_adapter_parameter(k) for k in state_dict):
        return None
    return add_adapters(model, cfg.adapters)
