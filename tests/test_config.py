"""Typed config: shipped YAMLs parse, overrides convert types, bad keys and values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from sam2train.cli import main
from sam2train.config import VALID_KEYS, Config, load_config, to_dict, to_yaml
from sam2train.errors import ConfigError

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        if k == "base":
            continue
        if isinstance(v, dict):
            out += _leaf_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _as_read(written: object, loaded: object) -> object:
    """A YAML value as the config reads it: PyYAML (YAML 1.1) reads `1e-4` (no dot) as a string, which a float
    field takes as the number. Nothing else converts: an int field never equals a string."""
    return float(written) if isinstance(written, str) and isinstance(loaded, float) else written


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_parses(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # every key written in the file is a Config field, and its value is the one loaded
    tree = yaml.safe_load(path.read_text())
    flat = to_dict(cfg)
    for key in _leaf_keys(tree):
        assert key in VALID_KEYS
        node = flat
        for part in key.split("."):
            node = node[part]
        expected = tree
        for part in key.split("."):
            expected = expected[part]
        assert node == _as_read(expected, node), key


def test_default_yaml_carries_the_spec_values() -> None:
    cfg = load_config(CONFIGS[0].parent / "default.yaml")
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.max_epochs) == ("auto", "auto", 50)
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.log_every_n_steps) == (1.0, 50)
    assert (cfg.optimizer.type, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("AdamW", 1e-4, 1e-4)
    assert cfg.optimizer.betas == [0.9, 0.999]
    assert (cfg.scheduler.type, cfg.scheduler.T_max, cfg.scheduler.eta_min) == ("CosineAnnealingLR", 50, 1e-6)
    weights = (cfg.loss.bce_weight, cfg.loss.dice_weight, cfg.loss.iou_weight, cfg.loss.temporal_weight)
    assert weights == (1.0, 1.0, 0.5, 0.1)


def test_recipe_overrides_base_without_repeating_it() -> None:
    demo = load_config(CONFIGS[0].parent / "demo.yaml")
    assert demo.model.image_size == 128  # from demo.yaml
    assert demo.optimizer.betas == [0.9, 0.999]  # from default.yaml
    assert "betas" not in (CONFIGS[0].parent / "demo.yaml").read_text()


def test_overrides_convert_types() -> None:
    cfg = load_config(
        None, ["optimizer.lr=3e-5", "data.clip_length=4", "data.augment=false", "trainer.devices=2"]
    )
    assert cfg.optimizer.lr == pytest.approx(3e-5) and isinstance(cfg.optimizer.lr, float)
    assert cfg.data.clip_length == 4 and cfg.data.augment is False and cfg.trainer.devices == 2
    cfg = load_config(None, ["model.trainable_modules=[sam_mask_decoder]", "data.val_clip_length=null"])
    assert cfg.model.trainable_modules == ["sam_mask_decoder"] and cfg.data.val_clip_length is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optimizer.lrr=1e-4", "'optimizer.lrr'. Did you mean 'optimizer.lr'"),
        ("dat.clip_length=3", "'dat.clip_length'. Did you mean 'data.clip_length'"),
        ("optimizer.lr=fast", "'optimizer.lr'"),
        ("data.clip_length=two", "'data.clip_length'"),
        ("optimizer.lr=-1e-4", "'optimizer.lr': must be > 0"),
        ("data.clip_length=0", "'data.clip_length': must be >= 1"),
        ("optimizer.type=SGD", "'optimizer.type': 'SGD' is not one of"),
        ("scheduler.type=Cosine", "Did you mean 'CosineAnnealingLR'"),
        ("model.image_size=100", "'model.image_size': must be a multiple of 32"),
        ("model.trainable_modules=[decoder]", "'model.trainable_modules[0]'"),
        ("trainer.precision=16", "'trainer.precision'"),
        ("prompts.mask_prob=0.9", "sum to"),
        ("data.format=mp4", "'data.format'"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: {}\ntrainer:\n  max_epoch: 3\n".format(CONFIGS[0].parent / "default.yaml"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.yaml" in str(err.value) and "'trainer.max_epoch'" in str(err.value)
    assert "trainer.max_epochs" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["optimizer.lr=2e-5", "data.train_videos=[a, b]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_print_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg_path = CONFIGS[0].parent / "demo.yaml"
    assert main(["fit", "--config", str(cfg_path), "--print-config", "optimizer.lr=5e-5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"]["lr"] == 5e-5 and printed["model"]["image_size"] == 128


def test_cli_reports_config_errors_in_one_line(capsys: pytest.CaptureFixture) -> None:
    cfg_path = CONFIGS[0].parent / "demo.yaml"
    assert main(["fit", "--config", str(cfg_path), "--print-config", "optimizer.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr" in err and "Traceback" not in err
