"""`sam2train export`: a checkpoint with a sam2train config -> an official `{"model": state_dict}` file for Meta's
tools (`--format pt`) or a safetensors file (`--format safetensors`).

The exported `FILE.pt` holds SAM 2's weights under their official keys (the `model.` prefix of the Lightning module
stripped), verified against the configured architecture with strict keys and shapes, so
`sam2.build_sam.build_sam2_video_predictor(config, FILE.pt)` loads it. `FILE.safetensors` holds the same tensors
and the training config as JSON metadata: `predict` reads it without unpickling anything, and `export` turns it
into a `.pt` for Meta's builders (which read `.pt` only). `FILE.yaml` beside either is the model config it was
trained with (image_size included), which `sam2train predict --model-config` reads. Meta's builders resolve
config names inside the `sam2` package with Hydra, so for them the command prints the official name plus a
`++model.image_size` override instead of the YAML's path. `--format hf` writes a folder for transformers'
`Sam2VideoModel` / `Sam2Model` and `Sam2VideoProcessor` (`model/hf_weights.py`; official architectures only).

Reading and writing are separate steps (`read_export_source`, `write_export`), so code that changes the weights in
between (merging adapters) writes through the same formats; a format is one entry of `EXPORT_FORMATS`. The
checkpoint helpers here (strict loading of what `model.checkpoints.read_checkpoint` read, `load_for_inference`)
serve `predict` too. torch, sam2 and Lightning are imported inside functions so that building the CLI parser stays
cheap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam2train.errors import UserError

if TYPE_CHECKING:
    import torch
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.config import ModelConfig
    from sam2train.model.checkpoints import CheckpointContents

log = logging.getLogger("sam2train")


@contextmanager
def _building_for_weights() -> Iterator[None]:
    """Build a model whose every weight is loaded right after: build_model's random-initialisation warning is
    silenced and torch.nn.init's functions do nothing, so the new parameters' memory is allocated but never
    written (not resident) until `load_state_dict(assign=True)` replaces them. The peak of loading is then the
    checkpoint alone, not the checkpoint plus a randomly initialised copy, and the random draws are skipped."""
    import torch

    logger = logging.getLogger("sam2train.model.build")
    disabled, logger.disabled = logger.disabled, True
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)
        logger.disabled = disabled


def build_with_weights(model_cfg: ModelConfig, contents: CheckpointContents, merge: bool = True) -> SAM2Base:
    """Instantiate SAM 2 as `model_cfg` says (CPU, train mode) and load `contents` with strict keys and shapes;
    a mismatch raises CheckpointError naming the file, the keys and the official config the weights match.
    The model takes `contents`' tensors as its parameters (no copy: do not reuse them). Weights with LoRA adapters
    (`model.adapters`) are copied into an adapted model, whose adapters are then merged into plain layers unless
    `merge` is False."""
    from sam2train.errors import CheckpointError
    from sam2train.model.adapters import adapters_for, merge_adapters
    from sam2train.model.build import build_model, infer_official_config

    with _building_for_weights():
        model = build_model(replace(model_cfg, checkpoint=None))
    tuner = adapters_for(model, model_cfg, contents.state_dict)
    own, sd = model.state_dict(), contents.state_dict
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or shapes:
        guess = infer_official_config(sd)
        hint = f"; the weights match the official config '{guess}'" if guess else ""
        raise CheckpointError(
            f"{contents.source}: weights do not fit model config '{model_cfg.config}' "
            f"({len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(shapes)} shape mismatches {shapes[:3]}){hint}"
        )
    if tuner is not None:  # merging adds into the base weights in place: copy them, never alias `contents`
        model.load_state_dict(sd, strict=True)
        return merge_adapters(tuner) if merge else model
    # the checkpoint's tensors become the parameters (no second copy), in the model's dtypes
    sd = {k: v if v.dtype == own[k].dtype else v.to(own[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def load_for_inference(
    checkpoint: str | Path,
    model_config: str | None,
    image_size: int | None,
    device: str,
    trust: bool = False,
    adapters: str | Path | None = None,
) -> SAM2Base:
    """SAM 2 with the checkpoint's weights, in eval mode with the builders' default post-processing.

    A sam2train Lightning checkpoint (or a safetensors file `export` wrote) brings its model config and image
    size (the flags override them); an official / exported `.pt` takes `--model-config`, else the `.yaml` that
    `export` wrote beside it, else the one official config whose architecture the weights have. A pickle the safe loader refuses is unpickled only with `trust`.
    """
    from sam2train.config import ModelConfig
    from sam2train.model.build import set_eval_postprocessing
    from sam2train.model.checkpoints import read_checkpoint

    contents = read_checkpoint(checkpoint, "--checkpoint", trust)
    stored = contents.config()
    if stored is not None:
        base = stored.model
        model_cfg = replace(
            base, config=model_config or base.config, image_size=image_size or base.image_size
        )
    else:
        beside = contents.path.with_suffix(".yaml")
        model_config = model_config or (str(beside) if beside.is_file() else None)
        if model_config is None:  # the one official config whose shapes the weights have, else an error
            from sam2train.eval.predict import model_config_from_weights

            model_config = model_config_from_weights(contents.state_dict, contents.path)
        model_cfg = ModelConfig(config=model_config, image_size=image_size or config_image_size(model_config))
    model = build_with_weights(model_cfg, contents)
    if adapters is not None:  # base + an adapter folder (`export --adapters-only`), merged
        from sam2train.model.adapters import with_adapter_folder

        model = with_adapter_folder(model, model_cfg, adapters)
    set_eval_postprocessing(model, True)
    return model.eval().to(device)


def official_config_file(name: str) -> str | None:
    """The name Meta's builders take (`configs/sam2.1/sam2.1_hiera_t.yaml`) for an official config name or a
    YAML inside the sam2 package; None for a user's own YAML."""
    import importlib.resources

    from sam2train.model.build import OFFICIAL_CONFIGS, resolve_model_config

    if name in OFFICIAL_CONFIGS:
        return OFFICIAL_CONFIGS[name]
    package = Path(str(importlib.resources.files("sam2"))).resolve()
    path = resolve_model_config(name).resolve()
    return path.relative_to(package).as_posix() if path.is_relative_to(package) else None


def config_image_size(name: str) -> int:
    """`model.image_size` as written in a model YAML (1024 in the official ones)."""
    from omegaconf import OmegaConf

    from sam2train.model.build import resolve_model_config

    return int(OmegaConf.load(resolve_model_config(name)).model.image_size)


def write_model_yaml(name: str, image_size: int, out: Path, source: Path) -> Path:
    """Write the model config `name` with `image_size` set to `out` (a full SAM 2 model YAML)."""
    from omegaconf import OmegaConf

    from sam2train.model.build import resolve_model_config

    tree = OmegaConf.load(resolve_model_config(name))
    tree.model.image_size = image_size
    header = f"# @package _global_\n# sam2train export of {source}: model config '{name}', image_size {image_size}\n"
    out.write_text(header + OmegaConf.to_yaml(tree))
    return out


def predictor_call(config_name: str, image_size: int, weights: Path, yaml_path: Path) -> str:
    """The Python line that builds Meta's video predictor from the exported files."""
    official = official_config_file(config_name)
    if official is None:
        return (
            f"# {config_name} is not a config inside the sam2 package, where build_sam2_video_predictor looks;\n"
            f"# use `sam2train predict --checkpoint {weights} --model-config {yaml_path}`, or put {yaml_path.name}\n"
            f"# on Hydra's search path and pass its name to build_sam2_video_predictor."
        )
    extra = ""
    if image_size != config_image_size(config_name):
        extra = f', hydra_overrides_extra=["++model.image_size={image_size}"]'
    return (
        "from sam2.build_sam import build_sam2_video_predictor\n"
        f'predictor = build_sam2_video_predictor("{official}", "{weights}"{extra})'
    )


@dataclass(frozen=True)
class ExportFormat:
    """How `export` writes one format: the file name's ending and the writer, which gets the weights (official
    keys), the output path, the model config and the full training config tree (for metadata)."""

    suffix: str
    write: Callable[[dict[str, torch.Tensor], Path, ModelConfig, Any], None]


def _write_pt(state_dict: dict[str, torch.Tensor], out: Path, model_cfg: ModelConfig, tree: Any) -> None:
    import torch

    torch.save({"model": state_dict}, out)  # Meta's format: build_sam2* read ["model"], nothing else


def _write_safetensors(
    state_dict: dict[str, torch.Tensor], out: Path, model_cfg: ModelConfig, tree: Any
) -> None:
    from sam2train.model.checkpoints import write_safetensors

    write_safetensors(state_dict, out, tree)


def _write_hf(state_dict: dict[str, torch.Tensor], out: Path, model_cfg: ModelConfig, tree: Any) -> None:
    from sam2train.model.hf_weights import save_hf_folder

    save_hf_folder(state_dict, official_hf_name(model_cfg.config), model_cfg.image_size, out)


def official_hf_name(config: str) -> str:
    """The official config name (`sam2.1_hiera_t`) of `config`, for transformers, which builds only those."""
    official = official_config_file(config)
    if official is None:
        raise UserError(
            f"--format hf: model config '{config}' is not an official SAM 2 config, and transformers builds only "
            "the official architectures (sam2.1_hiera_t/s/b+/l, sam2_hiera_t/s/b+/l)"
        )
    return Path(official).stem


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "pt": ExportFormat(".pt", _write_pt),
    "safetensors": ExportFormat(".safetensors", _write_safetensors),
    "hf": ExportFormat("", _write_hf),
}
"""`sam2train export --format NAME` -> how it is written (the first entry is the default). An empty suffix: `--out`
is a folder (`hf`: transformers' config.json, model.safetensors and processor configs, no model YAML)."""


@dataclass
class ExportSource:
    """What `read_export_source` opened: SAM 2 with the checkpoint's weights (strictly loaded, CPU), its model
    config, the checkpoint's config tree and the file's path."""

    model: SAM2Base
    model_cfg: ModelConfig
    config_tree: Any
    path: Path


def read_export_source(ckpt: str | Path, trust: bool = False) -> ExportSource:
    """Open `ckpt` (`--ckpt`: a sam2train Lightning checkpoint or a safetensors file `export` wrote) and build
    SAM 2 with its weights; CheckpointError when it carries no sam2train config."""
    from sam2train.errors import CheckpointError
    from sam2train.model.checkpoints import read_checkpoint

    contents = read_checkpoint(ckpt, "--ckpt", trust)
    stored = contents.config()
    if stored is None:
        raise CheckpointError(
            f"--ckpt {contents.path}: no sam2train config inside (not a checkpoint written by `sam2train fit` or "
            "`sam2train export --format safetensors`); an official {'model': state_dict} file needs no export"
        )
    model = build_with_weights(stored.model, contents)
    return ExportSource(model, stored.model, contents.config_tree, contents.path)


def _export_target(out: str | Path, fmt: str) -> tuple[Path, ExportFormat]:
    spec = EXPORT_FORMATS.get(fmt)
    if spec is None:
        raise UserError(f"--format {fmt}: unknown; one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out).expanduser()
    if not spec.suffix:
        if out.is_file():
            raise UserError(f"--out {out}: --format {fmt} writes a folder, and this is a file")
        weights_suffix = next(
            (f.suffix for f in EXPORT_FORMATS.values() if f.suffix and f.suffix == out.suffix), None
        )
        if weights_suffix:
            raise UserError(
                f"--out {out}: --format {fmt} writes a folder; give a folder name, not a {weights_suffix} file"
            )
        return out, spec
    if out.suffix != spec.suffix:
        raise UserError(f"--out {out}: expected a file name ending in {spec.suffix} (--format {fmt})")
    return out, spec


def write_export(source: ExportSource, out: str | Path, fmt: str = "pt") -> tuple[Path, Path, str]:
    """Write `source.model`'s weights to `out` in format `fmt` (an EXPORT_FORMATS name) and the model YAML beside
    it. Returns (weights file, YAML file, how to load them with Meta's predictor); for `hf`, (model.safetensors,
    config.json, how to load the folder with transformers)."""
    out, spec = _export_target(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().contiguous() for k, v in source.model.state_dict().items()}
    spec.write(state_dict, out, source.model_cfg, source.config_tree)
    cfg = source.model_cfg
    if fmt == "hf":
        from sam2train.model.hf_weights import HF_CONFIG, HF_WEIGHTS, transformers_call

        return out / HF_WEIGHTS, out / HF_CONFIG, transformers_call(out)
    yaml_path = write_model_yaml(cfg.config, cfg.image_size, out.with_suffix(".yaml"), source.path)
    if fmt != "pt":
        pt = out.with_suffix(".pt")
        return out, yaml_path, f"# Meta's builders read .pt files: `sam2train export --ckpt {out} --out {pt}`"
    return out, yaml_path, predictor_call(cfg.config, cfg.image_size, out, yaml_path)


def export_checkpoint(
    ckpt: str | Path, out: str | Path, fmt: str = "pt", trust: bool = False
) -> tuple[Path, Path, str]:
    """Export `ckpt` (a sam2train Lightning checkpoint, or a safetensors file this command wrote) to `out` in
    format `fmt` and the model YAML beside it.

    Returns (weights file, YAML file, the Python call that loads them with Meta's predictor).
    """
    _export_target(out, fmt)  # argument errors before the checkpoint is read
    return write_export(read_export_source(ckpt, trust), out, fmt)


def export_adapters(ckpt: str | Path, out: str | Path, trust: bool = False) -> Path:
    """Write the LoRA adapters of `ckpt` (a Lightning checkpoint of a `model.adapters` run), and the weights of its
    fully trained groups, to the folder `out` in peft's format, with the base weights' identity recorded; the
    base (`model.checkpoint`) plus this folder make the trained model (`predict --adapters`,
    `model.adapters.path`)."""
    from sam2train.errors import CheckpointError
    from sam2train.model.adapters import is_adapter_parameter, save_adapters
    from sam2train.model.build import parameter_group
    from sam2train.model.checkpoints import read_checkpoint

    contents = read_checkpoint(ckpt, "--ckpt", trust)
    stored = contents.config()
    if stored is None or not any(is_adapter_parameter(k) for k in contents.state_dict):
        raise CheckpointError(
            f"--ckpt {contents.path}: holds no LoRA adapters (train with model.adapters.type: lora)"
        )
    model = build_with_weights(stored.model, contents, merge=False)
    trained = stored.model.trainable_modules
    return save_adapters(
        model, stored.model, out, lambda name: parameter_group(name) in trained, stored.model.checkpoint
    )
