"""Build SAM 2 from an official config (or a model YAML) and a checkpoint; trainable groups and the parameter report.

`build_model(cfg)` is the one way our code gets a `SAM2Base`. Official config names map to the YAML files packaged
with `sam2`; they are loaded with OmegaConf and instantiated with Hydra's `instantiate`, exactly what
`sam2.build_sam.build_sam2(..., apply_postprocessing=False)` does, but without Hydra's global config search path,
so a user's YAML anywhere on disk works the same way. `sam2` is imported inside functions only: importing it
initialises global Hydra state.
"""

from __future__ import annotations

import importlib.resources
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sam2train import config as _config
from sam2train.config import ModelConfig
from sam2train.errors import CheckpointError, ConfigError
from sam2train.model.checkpoints import read_checkpoint
from sam2train.model.hf_config import check_model_config

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

log = logging.getLogger(__name__)

OFFICIAL_CONFIGS: dict[str, str] = {
    f"{version}_hiera_{size}": f"configs/{version}/{version}_hiera_{size}.yaml"
    for version in ("sam2.1", "sam2")
    for size in ("t", "s", "b+", "l")
}
"""Official config name -> the config file inside the `sam2` package (the name `build_sam2` takes)."""

# (trunk embed_dim, number of trunk blocks) -> size suffix of the official config.
_TRUNK_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}

_GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "image_encoder": ("image_encoder",),
    "memory_attention": ("memory_attention",),
    "memory_encoder": ("memory_encoder",),
    "sam_prompt_encoder": ("sam_prompt_encoder",),
    "sam_mask_decoder": ("sam_mask_decoder",),
    "obj_ptr_proj": ("obj_ptr_proj",),
    "obj_ptr_tpos_proj": ("obj_ptr_tpos_proj",),
    "free_parameters": (
        "maskmem_tpos_enc",
        "no_mem_embed",
        "no_mem_pos_enc",
        "no_obj_ptr",
        "no_obj_embed_spatial",
        "mask_downsample",
    ),
}
TRAINABLE_GROUPS: dict[str, tuple[str, ...]] = {
    name: _GROUP_PREFIXES[name] for name in _config.TRAINABLE_GROUPS
}
"""Group name -> parameter-name prefixes (a prefix matches the name itself or `prefix.<anything>`).
A parameter matching no prefix belongs to `free_parameters` (SAM 2's loose tensors outside the modules)."""


# --------------------------------------------------------------------------------------------- building


def resolve_model_config(name_or_path: str) -> Path:
    """The YAML file for an official config name (`sam2.1_hiera_t`, ...), a path to a model YAML, or a config
    inside the sam2 package as `build_sam2` names it (`configs/sam2.1/sam2.1_hiera_t.yaml`)."""
    package = importlib.resources.files("sam2")
    if name_or_path in OFFICIAL_CONFIGS:
        return Path(str(package / OFFICIAL_CONFIGS[name_or_path]))
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    if name_or_path.endswith(".yaml") and (package / name_or_path).is_file():  # build_sam2's own names
        return Path(str(package / name_or_path))
    raise ConfigError(
        f"config key 'model.config': '{name_or_path}' is neither an official config name "
        f"({', '.join(OFFICIAL_CONFIGS)}) nor an existing YAML file"
    )


def load_model_config(name_or_path: str, image_size: int) -> DictConfig:
    """The SAM 2 model section (`model:` with `_target_`) of a config, with `image_size` set and resolved."""
    path = resolve_model_config(name_or_path)
    try:
        tree = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"{path}: not a readable SAM 2 model YAML: {exc}") from exc
    if not isinstance(tree, DictConfig) or not isinstance(tree.get("model"), DictConfig):
        raise ConfigError(f"{path}: expected a SAM 2 model config with a top-level 'model:' section")
    if "_target_" not in tree.model:
        raise ConfigError(f"{path}: 'model' has no '_target_' (the SAM2Base class to instantiate)")
    tree.model.image_size = image_size  # same as hydra override ++model.image_size=S
    OmegaConf.resolve(tree)
    targets = model_targets(tree.model, "model")
    foreign = [f"{key}: {target}" for key, target in targets if not target.startswith("sam2.")]
    if foreign:
        # a model YAML may come with downloaded weights (predict reads FILE.yaml beside FILE.pt): it builds SAM 2's
        # modules and nothing else
        raise ConfigError(f"{path}: '_target_' may only name classes of the sam2 package, not {foreign[0]}")
    return tree.model


def model_targets(node: Any, key: str) -> list[tuple[str, str]]:
    """(dotted key, value) of every `_target_` in a model config tree."""
    if isinstance(node, DictConfig):
        found = [(key, str(node["_target_"]))] if "_target_" in node else []
        return found + [t for k, v in node.items() if k != "_target_" for t in model_targets(v, f"{key}.{k}")]
    if isinstance(node, ListConfig):
        return [t for i, v in enumerate(node) for t in model_targets(v, f"{key}[{i}]")]
    return []


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> SAM2Base:
    """Instantiate SAM 2 as `cfg` says, load `cfg.checkpoint` strictly, and return it in train mode on `device`.

    The model is built with `apply_postprocessing=False` semantics (no dynamic multimask via stability, no
    binarised memory, no hole filling): the same network in training, validation and predict.
    `cfg.checkpoint` null means random initialisation, with a loud warning.
    """
    from hydra.utils import instantiate
    from sam2.modeling.sam2_base import SAM2Base

    model_cfg = load_model_config(cfg.config, cfg.image_size)
    model = instantiate(model_cfg, _recursive_=True)
    if not isinstance(model, SAM2Base):
        raise ConfigError(
            f"config key 'model.config': {cfg.config} builds {type(model).__name__}, not a sam2 SAM2Base"
        )
    if cfg.checkpoint is None:
        msg = (
            "model.checkpoint is null: SAM 2 is RANDOMLY INITIALISED. Set model.checkpoint to an official "
            "checkpoint (e.g. sam2.1_hiera_tiny.pt) unless you really mean to train from scratch."
        )
        warnings.warn(msg, UserWarning, stacklevel=2)  # the CLI prints warnings as one line each
    else:
        load_checkpoint(model, cfg.checkpoint, config_name=cfg.config, trust=cfg.trust_checkpoint)
    return model.to(device).train()


# --------------------------------------------------------------------------------------------- checkpoints


def build_for_training(
    cfg: ModelConfig, load_weights: bool = True
) -> tuple[SAM2Base, dict[str, tuple[int, int]]]:
    """SAM 2 as the config trains it: built (from `model.checkpoint` when `load_weights`, else random weights that
    a Lightning checkpoint will replace), frozen outside `trainable_modules`, activation checkpointing (and that of
    a trainable image encoder) on when asked; with its parameter report (group -> (total, trainable))."""
    if load_weights:
        model = build_model(cfg, device="cpu")
    else:
        with warnings.catch_warnings():  # weights follow from the Lightning checkpoint: not a random init
            warnings.simplefilter("ignore")
            model = build_model(replace(cfg, checkpoint=None), device="cpu")
    apply_trainable(model, cfg.trainable_modules)
    if cfg.adapters.type is not None:
        from sam2train.model.adapters import apply_adapters

        apply_adapters(model, cfg, load_weights)
    if cfg.activation_checkpointing:
        from sam2train.model.memory_saving import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    if cfg.checkpoint_image_encoder and any(p.requires_grad for p in model.image_encoder.parameters()):
        from sam2train.model.memory_saving import enable_image_encoder_checkpointing

        enable_image_encoder_checkpointing(model)
    return model, parameter_report(model)


def infer_official_config(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The official config name whose architecture matches `state_dict` (None if none does)."""
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    size = _TRUNK_SIZES.get((int(patch.shape[0]), len(blocks)))
    if size is None:
        return None
    version = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    return f"{version}_hiera_{size}"


def official_configs_matching(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Every official config whose architecture the weights have, read from the configs' YAML (nothing is built):
    the image encoder's width and depth and SAM 2.1's `no_obj_embed_spatial`. Strict loading then checks every
    key and shape. More than one name means the weights do not say which config they are."""
    import inspect

    from sam2.modeling.backbones.hieradet import Hiera

    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return []
    blocks = len({int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks.")})
    spatial = "no_obj_embed_spatial" in state_dict
    defaults = {k: v.default for k, v in inspect.signature(Hiera.__init__).parameters.items()}
    found = []
    for name, file in OFFICIAL_CONFIGS.items():
        model = OmegaConf.load(importlib.resources.files("sam2") / file).model
        trunk = model.image_encoder.trunk
        shape = (trunk.get("embed_dim", defaults["embed_dim"]), sum(trunk.get("stages", defaults["stages"])))
        if shape == (patch.shape[0], blocks) and bool(model.get("no_obj_embed_spatial", False)) == spatial:
            found.append(name)
    return found


def _sample(keys: list[str], k: int = 5) -> str:
    more = f" ... (+{len(keys) - k} more)" if len(keys) > k else ""
    return ", ".join(keys[:k]) + more


def load_checkpoint(
    model: torch.nn.Module, path: str | Path, config_name: str | None = None, trust: bool = False
) -> None:
    """Load a checkpoint into `model` with strict keys and shapes (a pickle the safe loader refuses only when
    `trust`: `model.trust_checkpoint`).

    Raises CheckpointError naming the file, a few missing / unexpected keys and shape mismatches, and the official
    config the checkpoint matches.
    """
    contents = read_checkpoint(path, "model.checkpoint", trust, opt_in="model.trust_checkpoint=true")
    sd = contents.state_dict
    if contents.kind == "transformers" and config_name is not None:  # its config.json names the architecture
        described = contents.config_tree["model"]
        yamls = {resolve_model_config(name).resolve() for name in (described["config"], config_name)}
        check_model_config(described, config_name, len(yamls) == 1, int(model.image_size), contents.source)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
        for k in set(own) & set(sd)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {Path(path)} does not match model config '{config_name}' (strict loading):"]
        if missing:
            lines.append(f"  {len(missing)} missing keys, e.g. {_sample(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys, e.g. {_sample(unexpected)}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatches, e.g. {_sample(mismatched, 3)}")
        guess = infer_official_config(sd)
        if guess is not None and guess != config_name:
            lines.append(f"The checkpoint matches the official config '{guess}': set model.config: {guess}")
        elif guess is None:
            lines.append(f"It matches none of the official configs ({', '.join(OFFICIAL_CONFIGS)}).")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
    log.info("loaded checkpoint %s (%d tensors)", path, len(sd))


# --------------------------------------------------------------------------------------------- trainable groups


def parameter_group(name: str) -> str:
    """The trainable group of parameter `name`; raises ValueError if it matches prefixes of two groups."""
    hits = [
        group
        for group, prefixes in TRAINABLE_GROUPS.items()
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    ]
    if len(hits) > 1:
        raise ValueError(f"parameter '{name}' matches several trainable groups: {hits}")
    return hits[0] if hits else "free_parameters"


def group_parameters(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Every named parameter of `model`, each in exactly one group (all groups present, possibly empty)."""
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {g: [] for g in TRAINABLE_GROUPS}
    for name, param in model.named_parameters():
        groups[parameter_group(name)].append((name, param))
    return groups


def apply_trainable(model: torch.nn.Module, groups: list[str] | tuple[str, ...]) -> None:
    """Set `requires_grad` True for the parameters of `groups` and False for every other parameter."""
    unknown = [g for g in groups if g not in TRAINABLE_GROUPS]
    if unknown:
        raise ConfigError(
            f"config key 'model.trainable_modules': unknown groups {unknown}; valid: {list(TRAINABLE_GROUPS)}"
        )
    for group, params in group_parameters(model).items():
        for _, param in params:
            param.requires_grad_(group in groups)


def parameter_report(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Group -> (total parameters, trainable parameters), in TRAINABLE_GROUPS order; with LoRA adapters, a row
    `<group> lora` after each adapted group counts its adapters (and the group's row its base weights)."""
    from sam2train.model.adapters import is_adapter_parameter

    report: dict[str, tuple[int, int]] = {}
    for group, params in group_parameters(model).items():
        for suffix, adapter in (("", False), (" lora", True)):
            own = [p for name, p in params if is_adapter_parameter(name) == adapter]
            if own or not adapter:
                report[group + suffix] = (
                    sum(p.numel() for p in own),
                    sum(p.numel() for p in own if p.requires_grad),
                )
    return report


def format_parameter_report(report: dict[str, tuple[int, int]]) -> str:
    """`parameter_report` as a fixed-width table with a total row (for the setup log)."""
    width = max(len(g) for g in [*report, "total"])
    lines = [f"{'group':<{width}}  {'total':>12}  {'trainable':>12}"]
    for group, (total, trainable) in report.items():
        lines.append(f"{group:<{width}}  {total:>12,}  {trainable:>12,}")
    total = sum(t for t, _ in report.values())
    trainable = sum(t for _, t in report.values())
    lines.append(f"{'total':<{width}}  {total:>12,}  {trainable:>12,}")
    return "\n".join(lines)


def set_eval_postprocessing(model: torch.nn.Module, enabled: bool = True) -> None:
    """Switch on (or off) what `build_sam2*(apply_postprocessing=True)`, the builders' default, changes: dynamic
    multimask via stability (delta 0.05, threshold 0.98) and binarised prompted-frame memory. SAM 2 applies both
    in eval mode only, so training is unaffected. Hole filling (`fill_hole_area`, predictor-only, needs the
    compiled `sam2._C`) is not reproduced."""
    decoder = model.sam_mask_decoder
    decoder.dynamic_multimask_via_stability = enabled
    decoder.dynamic_multimask_stability_delta = 0.05
    decoder.dynamic_multimask_stability_thresh = 0.98
    model.binarize_mask_from_pts_for_mem_enc = enabled
