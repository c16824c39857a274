"""SAM 2 weights in `transformers`' layout (`Sam2VideoModel`, `Sam2Model`): the key mapping both ways, and the
folders, for `model.checkpoint` / `predict --checkpoint` of a transformers folder and `export --format hf`.

A transformers SAM 2 checkpoint is a folder with `config.json` (`model_type` `sam2_video` or `sam2`) and
`model.safetensors`. Its keys are renamed module by module (`image_encoder.trunk.` -> `vision_encoder.backbone.`,
Meta's 3-layer MLPs `layers.0/1/2` -> `proj_in / layers.0 / proj_out`, `norm*` -> `layer_norm*`, `out_proj` ->
`o_proj`, ...), with two changes of shape: Meta's four point embeddings `[1, C]` are one `[4, C]` table there, and
Meta's one random-Fourier matrix of the prompt encoder is stored twice (`prompt_encoder.shared_embedding` and
`shared_image_embedding`; both must be equal to come back). The mapping is one table of renames (`RENAMES`) read
in both directions, and strict: a key no rule maps, a missing key or a wrong shape is an error naming the key,
and a folder is checked against transformers' own model of its config (`hf_config.py`) before it is renamed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sam2train.errors import CheckpointError
from sam2train.model.hf_config import (
    HF_CONFIG,
    build_hf_config,
    hf_expected,
    import_transformers,
    infer_official,
    read_hf_config,
    save_hf_processor,
)

HF_WEIGHTS = "model.safetensors"
HF_MODEL_TYPES = ("sam2_video", "sam2")
"""`model_type` of a transformers SAM 2 config: the video model's, or the image model's (the hub's checkpoints,
which hold the video weights too)."""

_POINT_EMBEDS = 4
_META_POINT = "sam_prompt_encoder.point_embeddings.{}.weight"
_HF_POINT = "prompt_encoder.point_embed.weight"
_META_PE = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_HF_PE = "prompt_encoder.shared_embedding.positional_embedding"
_HF_PE_COPY = "shared_image_embedding.positional_embedding"


# --------------------------------------------------------------------------------------------- key mapping


def _mlp3(meta: str, hf: str) -> list[tuple[str, str]]:
    """Meta's 3-layer MLP (`layers.0/1/2`) and transformers' (`proj_in`, `layers.0`, `proj_out`)."""
    return [
        (f"{meta}.layers.0.", f"{hf}.proj_in."),
        (f"{meta}.layers.1.", f"{hf}.layers.0."),
        (f"{meta}.layers.2.", f"{hf}.proj_out."),
    ]


def _attention(meta: str, hf: str) -> list[tuple[str, str]]:
    """An attention module: `out_proj` is `o_proj` there; q/k/v_proj keep their names."""
    return [(f"{meta}.out_proj.", f"{hf}.o_proj."), (f"{meta}.", f"{hf}.")]


def _image_encoder() -> list[tuple[str, str]]:
    trunk, hiera = "image_encoder.trunk", "vision_encoder.backbone"
    block, hblock = f"{trunk}.blocks.{{a}}", f"{hiera}.blocks.{{a}}"
    return [
        (f"{trunk}.patch_embed.proj.", f"{hiera}.patch_embed.projection."),
        (f"{trunk}.pos_embed", f"{hiera}.pos_embed"),
        (f"{trunk}.pos_embed_window", f"{hiera}.pos_embed_window"),
        (f"{block}.norm{{b}}.", f"{hblock}.layer_norm{{b}}."),
        (f"{block}.attn.", f"{hblock}.attn."),
        (f"{block}.mlp.layers.0.", f"{hblock}.mlp.proj_in."),
        (f"{block}.mlp.layers.1.", f"{hblock}.mlp.proj_out."),
        (f"{block}.proj.", f"{hblock}.proj."),
        ("image_encoder.neck.convs.{a}.conv.", "vision_encoder.neck.convs.{a}."),
    ]


def _memory() -> list[tuple[str, str]]:
    layer = "memory_attention.layers.{a}"
    fuser, hfuser = "memory_encoder.fuser.layers.{a}", "memory_encoder.memory_fuser.layers.{a}"
    down, hdown = "memory_encoder.mask_downsampler.encoder", "memory_encoder.mask_downsampler"
    table = [
        *_attention(f"{layer}.self_attn", f"{layer}.self_attn"),
        *_attention(f"{layer}.cross_attn_image", f"{layer}.cross_attn_image"),
        (f"{layer}.norm{{b}}.", f"{layer}.layer_norm{{b}}."),
        (f"{layer}.linear{{b}}.", f"{layer}.linear{{b}}."),
        ("memory_attention.norm.", "memory_attention.layer_norm."),
        ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
        ("memory_encoder.out_proj.", "memory_encoder.projection."),
        (f"{fuser}.dwconv.", f"{hfuser}.depthwise_conv."),
        (f"{fuser}.norm.", f"{hfuser}.layer_norm."),
        (f"{fuser}.pwconv{{b}}.", f"{hfuser}.pointwise_conv{{b}}."),
        (f"{fuser}.gamma", f"{hfuser}.scale"),
    ]
    # the mask downsampler: (conv, LayerNorm2d, GELU) x 4 (stride 16 in steps of 2), then a 1x1 conv
    for i in range(4):
        table.append((f"{down}.{3 * i}.", f"{hdown}.layers.{i}.conv."))
        table.append((f"{down}.{3 * i + 1}.", f"{hdown}.layers.{i}.layer_norm."))
    return [*table, (f"{down}.12.", f"{hdown}.final_conv.")]


def _prompt_encoder() -> list[tuple[str, str]]:
    """The point embeddings and the Fourier matrix's copy are handled apart (see the module docstring)."""
    meta, hf = "sam_prompt_encoder", "prompt_encoder"
    return [
        (_META_PE, _HF_PE),
        (f"{meta}.not_a_point_embed.", f"{hf}.not_a_point_embed."),
        (f"{meta}.no_mask_embed.", f"{hf}.no_mask_embed."),
        (f"{meta}.mask_downscaling.0.", f"{hf}.mask_embed.conv1."),
        (f"{meta}.mask_downscaling.1.", f"{hf}.mask_embed.layer_norm1."),
        (f"{meta}.mask_downscaling.3.", f"{hf}.mask_embed.conv2."),
        (f"{meta}.mask_downscaling.4.", f"{hf}.mask_embed.layer_norm2."),
        (f"{meta}.mask_downscaling.6.", f"{hf}.mask_embed.conv3."),
    ]


def _mask_decoder() -> list[tuple[str, str]]:
    meta, hf = "sam_mask_decoder", "mask_decoder"
    twoway, htwoway = f"{meta}.transformer", f"{hf}.transformer"
    table = [
        (f"{twoway}.layers.{{a}}.norm{{b}}.", f"{htwoway}.layers.{{a}}.layer_norm{{b}}."),
        (f"{twoway}.layers.{{a}}.mlp.layers.0.", f"{htwoway}.layers.{{a}}.mlp.proj_in."),
        (f"{twoway}.layers.{{a}}.mlp.layers.1.", f"{htwoway}.layers.{{a}}.mlp.proj_out."),
        *_attention(f"{twoway}.final_attn_token_to_image", f"{htwoway}.final_attn_token_to_image"),
        (f"{twoway}.norm_final_attn.", f"{htwoway}.layer_norm_final_attn."),
        (f"{meta}.output_upscaling.0.", f"{hf}.upscale_conv1."),
        (f"{meta}.output_upscaling.1.", f"{hf}.upscale_layer_norm."),
        (f"{meta}.output_upscaling.3.", f"{hf}.upscale_conv2."),
        *_mlp3(f"{meta}.output_hypernetworks_mlps.{{a}}", f"{hf}.output_hypernetworks_mlps.{{a}}"),
        *_mlp3(f"{meta}.iou_prediction_head", f"{hf}.iou_prediction_head"),
        *_mlp3(f"{meta}.pred_obj_score_head", f"{hf}.pred_obj_score_head"),
    ]
    for name in ("iou_token", "mask_tokens", "obj_score_token", "conv_s0", "conv_s1"):
        table.append((f"{meta}.{name}.", f"{hf}.{name}."))
    for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
        table += _attention(f"{twoway}.layers.{{a}}.{name}", f"{htwoway}.layers.{{a}}.{name}")
    return table


def _tracking() -> list[tuple[str, str]]:
    """SAM 2's own tensors and heads around the modules."""
    return [
        ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
        ("no_mem_embed", "no_memory_embedding"),
        ("no_mem_pos_enc", "no_memory_positional_encoding"),
        ("no_obj_ptr", "no_object_pointer"),
        ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
        ("mask_downsample.", "mask_downsample."),
        ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),
        *_mlp3("obj_ptr_proj", "object_pointer_proj"),
    ]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    target: str


def _compile(source: str, target: str) -> _Rule:
    """A rule matching `source` (a prefix when it ends in `.`, else the exact key) and writing `target`."""
    parts = re.split(r"(\{[a-z]\})", source)
    body = "".join(f"(?P<{p[1]}>\\d+)" if re.fullmatch(r"\{[a-z]\}", p) else re.escape(p) for p in parts)
    rest = "(?P<rest>.+)" if source.endswith(".") else "(?P<rest>)"
    return _Rule(re.compile(body + rest), target + "{rest}")


RENAMES: list[tuple[str, str]] = [
    *_image_encoder(),
    *_memory(),
    *_prompt_encoder(),
    *_mask_decoder(),
    *_tracking(),
]
"""(Meta, transformers) module prefixes (ending in `.`) or exact keys, `{a}` and `{b}` standing for numbers; a key
takes the first rule that matches (a module's `out_proj` before the module), in either direction."""
_TO_HF = [_compile(meta, hf) for meta, hf in RENAMES]
_TO_META = [_compile(hf, meta) for meta, hf in RENAMES]


def _rename(key: str, rules: list[_Rule]) -> str | None:
    for rule in rules:
        found = rule.pattern.fullmatch(key)
        if found:
            return rule.target.format(**found.groupdict())
    return None


def meta_key_to_hf(key: str) -> str | None:
    """The transformers key of one Meta key (None for the point embeddings and keys no rule maps)."""
    return _rename(key, _TO_HF)


def hf_key_to_meta(key: str) -> str | None:
    """The Meta key of one transformers key (None for the point table, its Fourier copy and unknown keys)."""
    return _rename(key, _TO_META)


def meta_to_hf(state_dict: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """Meta's SAM 2 state dict in transformers' `Sam2VideoModel` layout; a key no rule maps is a CheckpointError
    naming it (and `source`)."""
    out: dict[str, torch.Tensor] = {}
    points = [_META_POINT.format(i) for i in range(_POINT_EMBEDS)]
    for key, value in state_dict.items():
        if key in points:
            continue
        hf = meta_key_to_hf(key)
        if hf is None:
            raise CheckpointError(f"{source}: the key '{key}' has no place in transformers' Sam2VideoModel")
        out[hf] = value
    missing = [k for k in points if k not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: the key '{missing[0]}' is missing")
    out[_HF_POINT] = torch.cat([state_dict[k] for k in points], dim=0)
    out[_HF_PE_COPY] = state_dict[_META_PE].clone()
    return out


def hf_to_meta(state_dict: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """A transformers SAM 2 state dict in Meta's layout: every key used (an unknown key is a CheckpointError
    naming it), the point table split in four, the Fourier matrix's two copies checked equal."""
    for key in (_HF_POINT, _HF_PE, _HF_PE_COPY):
        if key not in state_dict:
            raise CheckpointError(f"{source}: the key '{key}' is missing")
    if not torch.equal(state_dict[_HF_PE], state_dict[_HF_PE_COPY]):
        raise CheckpointError(
            f"{source}: '{_HF_PE}' and '{_HF_PE_COPY}' differ; Meta's SAM 2 has one matrix for both (copy one "
            "over the other in transformers before saving)"
        )
    table = state_dict[_HF_POINT]
    if table.ndim != 2 or table.shape[0] != _POINT_EMBEDS:
        raise CheckpointError(
            f"{source}: '{_HF_POINT}' has shape {list(table.shape)}, expected [{_POINT_EMBEDS}, C]"
        )
    out = {_META_POINT.format(i): table[i : i + 1].clone() for i in range(_POINT_EMBEDS)}
    for key, value in state_dict.items():
        if key in (_HF_POINT, _HF_PE_COPY):
            continue
        meta = hf_key_to_meta(key)
        if meta is None:
            raise CheckpointError(f"{source}: the key '{key}' is not part of SAM 2 (no Meta key maps to it)")
        out[meta] = value
    return out


def check_against(
    state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, model: str
) -> None:
    """Strict keys and shapes of `state_dict` against `expected` (a model's state dict): the first missing key,
    unexpected key or shape mismatch is a CheckpointError that names it, with the counts of each."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"'{k}' has shape {list(state_dict[k].shape)} where {model} has {list(expected[k].shape)}"
            + (f" (+{len(shapes) - 1} more shape mismatches)" if len(shapes) > 1 else "")
        )
    if missing:
        parts.append(f"the key '{missing[0]}' is missing" + _more(missing))
    if unexpected:
        parts.append(f"the key '{unexpected[0]}' is not in {model}" + _more(unexpected))
    raise CheckpointError(f"{source}: does not fit {model}: " + "; ".join(parts))


def _more(keys: list[str]) -> str:
    return f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""


# --------------------------------------------------------------------------------------------- folders


def hf_folder(path: Path) -> Path | None:
    """The folder of a transformers SAM 2 checkpoint when `path` is one (a folder with `config.json` of model
    type sam2/sam2_video) or its `model.safetensors`; None for anything else."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.suffix != ".safetensors":
        return None
    config = folder / HF_CONFIG
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return folder if model_type in HF_MODEL_TYPES else None


@dataclass
class HFCheckpoint:
    """A transformers SAM 2 checkpoint read into Meta's layout: the state dict, and the official config name
    and image size its config.json describes."""

    state_dict: dict[str, torch.Tensor]
    config: str
    image_size: int


def read_hf_checkpoint(folder: Path, source: str) -> HFCheckpoint:
    """Read a transformers SAM 2 folder: config.json -> the official architecture, model.safetensors checked
    strictly against transformers' own model of that config (every key, every shape), then renamed to Meta's
    layout. Errors are CheckpointErrors naming `source` and the key; no pickle is read."""
    weights = folder / HF_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(
            f"{source}: the transformers folder has no {HF_WEIGHTS} (only safetensors weights are read; "
            "re-save with save_pretrained(..., safe_serialization=True))"
        )
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            hf_sd = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{source}/{HF_WEIGHTS}: not a readable safetensors file ({exc})") from exc
    config = read_hf_config(folder, source, set(hf_sd))
    name, image_size = infer_official(config, f"{source}/{HF_CONFIG}")
    check_against(hf_sd, hf_expected(name, image_size), f"{source}/{HF_WEIGHTS}", f"transformers' {name}")
    return HFCheckpoint(hf_to_meta(hf_sd, source), name, image_size)


def save_hf_folder(state_dict: dict[str, torch.Tensor], name: str, image_size: int, out: Path) -> list[Path]:
    """Write `out/` so that `Sam2VideoModel.from_pretrained(out)` (and `Sam2Model`) and
    `Sam2VideoProcessor.from_pretrained(out)` load it: config.json, model.safetensors (checked strictly against
    transformers' model first) and the processor's configs. Returns the files written."""
    import_transformers()
    from safetensors.torch import save_file

    hf_sd = meta_to_hf(state_dict)
    check_against(hf_sd, hf_expected(name, image_size), f"{name} weights", f"transformers' {name}")
    out.mkdir(parents=True, exist_ok=True)
    config = build_hf_config(name, image_size)
    config.architectures = ["Sam2VideoModel"]
    config.save_pretrained(out)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in hf_sd.items()}
    save_file(tensors, str(out / HF_WEIGHTS), metadata={"format": "pt"})
    processor_files = save_hf_processor(out, image_size)
    return [out / HF_CONFIG, out / HF_WEIGHTS, *processor_files]


def transformers_call(folder: Path) -> str:
    """The Python lines that load `folder` (written by `save_hf_folder`) with transformers."""
    return (
        "from transformers import Sam2VideoModel, Sam2VideoProcessor\n"
        f'model = Sam2VideoModel.from_pretrained("{folder}")\n'
        f'processor = Sam2VideoProcessor.from_pretrained("{folder}")'
    )
