"""`sam2train export`: a Lightning checkpoint -> an official `{"model": state_dict}` file for Meta's tools.

The exported `FILE.pt` holds SAM 2's weights under their official keys (the `model.` prefix of the Lightning module
stripped), verified against the configured architecture with strict keys and shapes, so
`sam2.build_sam.build_sam2_video_predictor(config, FILE.pt)` loads it. `FILE.yaml` beside it is the model config
it was trained with (image_size included), which `sam2train predict --model-config` reads. Meta's builders resolve
config names inside the `sam2` package with Hydra, so for them the command prints the official name plus a
`++model.image_size` override instead of the YAML's path.

The checkpoint helpers here (strict loading of what `model.checkpoints.read_checkpoint` read,
`load_for_inference`) serve `predict` too. torch, sam2 and Lightning are imported inside functions so that
building the CLI parser stays cheap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sam2train.errors import UserError

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.config import ModelConfig
    from sam2train.model.checkpoints import CheckpointContents

log = logging.getLogger("sam2train")


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Silence build_model's random-initialisation warning: the weights are loaded right after."""
    logger = logging.getLogger("sam2train.model.build")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.disabled = disabled


def build_with_weights(model_cfg: ModelConfig, contents: CheckpointContents) -> SAM2Base:
    """Instantiate SAM 2 as `model_cfg` says (CPU, train mode) and load `contents` with strict keys and shapes;
    a mismatch raises CheckpointError naming the file, the keys and the official config the weights match."""
    from sam2train.errors import CheckpointError
    from sam2train.model.build import build_model, infer_official_config

    with _quiet_random_init():
        model = build_model(replace(model_cfg, checkpoint=None))
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
    model.load_state_dict(sd, strict=True)
    return model


def load_for_inference(
    checkpoint: str | Path, model_config: str | None, image_size: int | None, device: str
) -> SAM2Base:
    """SAM 2 with the checkpoint's weights, in eval mode with the builders' default post-processing.

    A sam2train Lightning checkpoint brings its model config and image size (the flags override them); an
    official / exported `.pt` needs `--model-config` (default: the `.yaml` that `export` wrote beside it).
    """
    from sam2train.config import ModelConfig
    from sam2train.model.build import infer_official_config, set_eval_postprocessing
    from sam2train.model.checkpoints import read_checkpoint

    contents = read_checkpoint(checkpoint, "--checkpoint")
    stored = contents.config()
    if stored is not None:
        base = stored.model
        model_cfg = replace(
            base, config=model_config or base.config, image_size=image_size or base.image_size
        )
    else:
        beside = contents.path.with_suffix(".yaml")
        model_config = model_config or (str(beside) if beside.is_file() else None)
        if model_config is None:
            guess = infer_official_config(contents.state_dict)
            hint = f" (these weights match '{guess}')" if guess else ""
            raise UserError(
                f"--model-config is required with {contents.path}, which holds weights but no config: "
                f"give an official config name or a model YAML{hint}"
            )
        model_cfg = ModelConfig(config=model_config, image_size=image_size or config_image_size(model_config))
    model = build_with_weights(model_cfg, contents)
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


def export_checkpoint(ckpt: str | Path, out: str | Path) -> tuple[Path, Path, str]:
    """Export a sam2train Lightning checkpoint to `out` (`{"model": sd}`) and the model YAML beside it.

    Returns (weights file, YAML file, the Python call that loads them with Meta's predictor).
    """
    import torch

    from sam2train.errors import CheckpointError
    from sam2train.model.checkpoints import read_checkpoint

    out = Path(out).expanduser()
    if out.suffix != ".pt":
        raise UserError(f"--out {out}: expected a file name ending in .pt")
    contents = read_checkpoint(ckpt, "--ckpt")
    stored = contents.config()
    if stored is None:
        raise CheckpointError(
            f"--ckpt {contents.path}: no sam2train config inside (not a checkpoint written by `sam2train fit`); "
            "an official {'model': state_dict} file needs no export"
        )
    model_cfg = stored.model
    model = build_with_weights(model_cfg, contents)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().contiguous() for k, v in model.state_dict().items()}}, out)
    yaml_path = write_model_yaml(
        model_cfg.config, model_cfg.image_size, out.with_suffix(".yaml"), contents.path
    )
    return out, yaml_path, predictor_call(model_cfg.config, model_cfg.image_size, out, yaml_path)
