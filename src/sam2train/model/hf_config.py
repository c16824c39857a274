"""The transformers config of a SAM 2 (`Sam2VideoConfig`) both ways, for `hf_weights`.

transformers builds only the official architectures (Hiera t, s, b+, l; SAM 2 or 2.1 object-pointer and
occlusion options) at any image size, so the config goes through the official config name and `image_size`:
`hf_config` writes the transformers config of one, `infer_official` reads it back from a `config.json`, naming the
first field that fits no official architecture, and `check_model_config` compares that with `model.config`. The
Hiera table mirrors Meta's YAMLs (a test compares them).
transformers (the `[hf]` extra) is imported inside functions: without it, everything else works.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import torch

from sam2train.errors import CheckpointError, MissingDependencyError, UserError

HF_EXTRA = 'pip install "sam2train[hf]"'
HF_CONFIG = "config.json"

log = logging.getLogger("sam2train")


def import_transformers() -> Any:
    """The `transformers` module; MissingDependencyError naming the `[hf]` extra when it is not installed."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            f"transformers SAM 2 checkpoints need the transformers package: {HF_EXTRA}"
        ) from exc
    return transformers


# --------------------------------------------------------------------------------------------- configs

_HIERA: dict[str, dict[str, Any]] = {
    "t": {"hidden_size": 96, "num_attention_heads": 1, "blocks_per_stage": [1, 2, 7, 2],
          "global_attention_blocks": [5, 7, 9], "window_positional_embedding_background_size": [7, 7]},
    "s": {"hidden_size": 96, "num_attention_heads": 1, "blocks_per_stage": [1, 2, 11, 2],
          "global_attention_blocks": [7, 10, 13], "window_positional_embedding_background_size": [7, 7]},
    "b+": {"hidden_size": 112, "num_attention_heads": 2, "blocks_per_stage": [2, 3, 16, 3],
           "global_attention_blocks": [12, 16, 20], "window_positional_embedding_background_size": [14, 14]},
    "l": {"hidden_size": 144, "num_attention_heads": 2, "blocks_per_stage": [2, 6, 36, 4],
          "global_attention_blocks": [23, 33, 43], "window_positional_embedding_background_size": [7, 7],
          "window_size_per_stage": [8, 4, 16, 8]},
}  # fmt: skip
"""The Hiera trunk of each official size, as Meta's YAMLs set it (embed_dim, num_heads, stages,
global_att_blocks, window_pos_embed_bkg_spatial_size, window_spec when not the default)."""
OFFICIAL_NAMES = tuple(f"{v}_hiera_{s}" for v in ("sam2.1", "sam2") for s in _HIERA)


def hf_config(name: str, image_size: int) -> dict[str, Any]:
    """The `Sam2VideoConfig` fields (nested dicts for the sub-configs) of official config `name` at
    `image_size`: the Hiera trunk, every size that follows from the image size, and the SAM 2 / 2.1 options."""
    if name not in OFFICIAL_NAMES:
        raise UserError(
            f"transformers builds only the official SAM 2 architectures ({', '.join(OFFICIAL_NAMES)}); "
            f"'{name}' is none of them"
        )
    if image_size % 32:
        raise UserError(f"image_size {image_size}: transformers' SAM 2 needs a multiple of 32")
    version, size = name.split("_hiera_")
    trunk = {"window_size_per_stage": [8, 4, 14, 7], **_HIERA[size]}
    dim, heads = trunk["hidden_size"], trunk["num_attention_heads"]
    trunk["embed_dim_per_stage"] = [dim * 2**i for i in range(4)]
    trunk["num_attention_heads_per_stage"] = [heads * 2**i for i in range(4)]
    trunk["image_size"] = [image_size, image_size]
    feats = [[image_size // stride] * 2 for stride in (4, 8, 16)]
    is_21 = version == "sam2.1"
    return {
        "image_size": image_size,
        "enable_occlusion_spatial_embedding": is_21,
        "enable_temporal_pos_encoding_for_object_pointers": is_21,
        "memory_attention_rope_feat_sizes": feats[-1],
        "prompt_encoder_config": {"image_size": image_size},
        "vision_config": {
            "backbone_config": trunk,
            "backbone_channel_list": trunk["embed_dim_per_stage"][::-1],
            "backbone_feature_sizes": feats,
        },
    }


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def _config_value(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = config.get(part) if isinstance(config, dict) else getattr(config, part, None)
    return (
        [list(v) if isinstance(v, tuple) else v for v in config]
        if isinstance(config, list | tuple)
        else config
    )


def config_differences(config: Any, name: str, image_size: int) -> list[str]:
    """`field: found vs expected` for every field of `hf_config(name, image_size)` that `config` (a transformers
    config or its dict) sets otherwise."""
    return [
        f"{path} is {_config_value(config, path)}, {name} at {image_size} px has {want}"
        for path, want in _flat(hf_config(name, image_size)).items()
        if _config_value(config, path) != want
    ]


def infer_official(config: Any, source: str) -> tuple[str, int]:
    """(official config name, image size) of a transformers SAM 2 config; a CheckpointError naming the first
    field that fits no official architecture (compared with the nearest one) otherwise."""
    image_size = _config_value(config, "image_size")
    if not isinstance(image_size, int) or image_size % 32:
        raise CheckpointError(f"{source}: image_size is {image_size!r}, expected a multiple of 32")
    ranked = sorted((len(config_differences(config, n, image_size)), n) for n in OFFICIAL_NAMES)
    count, nearest = ranked[0]
    if count:
        first = config_differences(config, nearest, image_size)[0]
        raise CheckpointError(f"{source}: not an official SAM 2 architecture: {first}")
    return nearest, image_size


def build_hf_config(name: str, image_size: int) -> Any:
    """The transformers `Sam2VideoConfig` of official config `name` at `image_size`."""
    transformers = import_transformers()
    fields = hf_config(name, image_size)
    vision = fields.pop("vision_config")
    vision["backbone_config"] = transformers.Sam2HieraDetConfig(**vision["backbone_config"])
    return transformers.Sam2VideoConfig(vision_config=transformers.Sam2VisionConfig(**vision), **fields)


@functools.lru_cache(maxsize=8)
def hf_expected(name: str, image_size: int) -> dict[str, torch.Tensor]:
    """transformers' `Sam2VideoModel` state dict of `name` at `image_size`, on the meta device (shapes only;
    cached: do not change it)."""
    transformers = import_transformers()
    with torch.device("meta"):
        return transformers.Sam2VideoModel(build_hf_config(name, image_size)).state_dict()


def save_hf_processor(out: Path, image_size: int) -> list[Path]:
    """Write the `Sam2VideoProcessor` configs for `image_size`: frames squashed to it with bicubic resampling, as
    Meta's predictor and `predict` resize them (transformers' default, bilinear, moves a few boundary pixels:
    per-frame IoU 0.97 instead of 0.999 against `predict` on DAVIS with a random model), masks at a quarter."""
    transformers = import_transformers()
    from transformers.image_utils import PILImageResampling

    square = {"height": image_size, "width": image_size}
    quarter = {"height": image_size // 4, "width": image_size // 4}
    bicubic = PILImageResampling.BICUBIC
    processor = transformers.Sam2VideoProcessor(
        image_processor=transformers.Sam2ImageProcessor(size=square, mask_size=quarter, resample=bicubic),
        video_processor=transformers.Sam2VideoVideoProcessor(size=square, resample=bicubic),
        target_size=image_size,
    )
    before = set(out.iterdir())
    processor.save_pretrained(out)
    return sorted(set(out.iterdir()) - before)


_VERSION_FLAGS = {
    "enable_occlusion_spatial_embedding": "occlusion_spatial_embedding_parameter",
    "enable_temporal_pos_encoding_for_object_pointers": "temporal_positional_encoding_projection_layer.weight",
}
"""The SAM 2.1 options of a video config -> the tensor each one adds."""


def read_hf_config(folder: Path, source: str, keys: set[str]) -> dict[str, Any]:
    """config.json as the Sam2VideoConfig it describes (transformers' defaults filled in). An image model's config
    (`sam2`) has no video options: its image size is the prompt encoder's, the memory's feature size follows from
    it, and its SAM 2.1 options are read from the tensors in `keys`."""
    transformers = import_transformers()
    try:
        tree = json.loads((folder / HF_CONFIG).read_text())
        tree = {
            k: v for k, v in tree.items() if k not in ("model_type", "architectures", "transformers_version")
        }
        size = tree.setdefault("image_size", tree.get("prompt_encoder_config", {}).get("image_size", 1024))
        tree.setdefault("memory_attention_rope_feat_sizes", [size // 16] * 2)
        for flag, tensor in _VERSION_FLAGS.items():
            tree.setdefault(flag, tensor in keys)
        return transformers.Sam2VideoConfig(**tree).to_dict()
    except Exception as exc:  # transformers' strict configs raise several types
        raise CheckpointError(f"{source}: {HF_CONFIG} is not a readable SAM 2 config ({exc})") from exc


def check_model_config(
    described: dict[str, Any], config_name: str, same: bool, image_size: int, source: str
) -> None:
    """Compare what a transformers checkpoint's config.json describes (`{"config", "image_size"}`) with
    `model.config` (`same`: both name one architecture) and `model.image_size`: another architecture is a
    CheckpointError that says which config to set; another image size is logged (SAM 2's weights do not depend
    on it, so fine-tuning at another resolution is allowed)."""
    name, size = described["config"], described["image_size"]
    if not same:
        raise CheckpointError(
            f"{source}: its {HF_CONFIG} describes {name} ({size} px), but model.config is '{config_name}': "
            f"set model.config: {name}"
        )
    if size != image_size:
        log.warning(
            "%s: its %s says image_size %d; the model runs at model.image_size %d", source, HF_CONFIG, size,
            image_size,
        )  # fmt: skip
