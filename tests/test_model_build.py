"""Building SAM 2: configs, strict checkpoints with actionable errors, trainable groups and the report."""

from __future__ import annotations

import importlib.resources
import shutil

import pytest
import torch

from sam2train import config as config_module
from sam2train.config import ModelConfig
from sam2train.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from sam2train.model import (
    TRAINABLE_GROUPS,
    apply_trainable,
    build_model,
    format_parameter_report,
    group_parameters,
    infer_official_config,
    parameter_report,
)
from sam2train.model import build as build_module
from sam2train.model.build import resolve_model_config
from sam2train.model.checkpoints import CONFIG_KEY, read_checkpoint

TINY_SIZE = 128
HIERA_T_PARAMS = 38_962_498
FREE = {"maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, hiera_t_sam2):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": hiera_t_sam2.state_dict()}, path)
    return path


def test_group_names_match_config():
    assert tuple(TRAINABLE_GROUPS) == config_module.TRAINABLE_GROUPS


def test_every_parameter_in_exactly_one_group(hiera_t_sam2):
    groups = group_parameters(hiera_t_sam2)
    names = [name for params in groups.values() for name, _ in params]
    assert sorted(names) == sorted(n for n, _ in hiera_t_sam2.named_parameters())
    assert len(names) == len(set(names))
    free = {name.split(".")[0] for name, _ in groups["free_parameters"]}
    assert free == FREE | {"mask_downsample"}
    assert sum(p.numel() for p in hiera_t_sam2.parameters()) == HIERA_T_PARAMS


def test_overlapping_prefixes_name_the_parameter(hiera_t_sam2, monkeypatch):
    patched = {**TRAINABLE_GROUPS, "obj_ptr_proj": ("obj_ptr_proj", "memory_encoder.out_proj")}
    monkeypatch.setattr(build_module, "TRAINABLE_GROUPS", patched)
    with pytest.raises(ValueError, match=r"memory_encoder\.out_proj\.weight.*several trainable groups"):
        group_parameters(hiera_t_sam2)


def test_apply_trainable_freezes_everything_else(fresh_hiera_t_sam2):
    model = fresh_hiera_t_sam2
    apply_trainable(model, ["memory_attention", "memory_encoder"])
    for group, params in group_parameters(model).items():
        for name, p in params:
            assert p.requires_grad == (group in ("memory_attention", "memory_encoder")), name
    report = parameter_report(model)
    assert list(report) == list(TRAINABLE_GROUPS)
    assert sum(total for total, _ in report.values()) == HIERA_T_PARAMS
    trainable = sum(t for _, t in report.values())
    assert trainable == report["memory_attention"][0] + report["memory_encoder"][0]
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = format_parameter_report(report)
    assert "38,962,498" in table and f"{trainable:,}" in table and "free_parameters" in table


def test_apply_trainable_rejects_unknown_group(fresh_hiera_t_sam2):
    with pytest.raises(ConfigError, match="memory_decoder"):
        apply_trainable(fresh_hiera_t_sam2, ["memory_decoder"])


def test_random_init_warns():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        model = build_model(ModelConfig(image_size=TINY_SIZE))
    assert model.training and model.image_size == TINY_SIZE


def test_official_checkpoint_loads_strictly(hiera_t_sam2, tiny_checkpoint):
    model = build_model(ModelConfig(image_size=TINY_SIZE, checkpoint=str(tiny_checkpoint)))
    assert model.training
    expected = hiera_t_sam2.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_lightning_checkpoint_loads(hiera_t_sam2, tmp_path):
    state = {f"model.{k}": v for k, v in hiera_t_sam2.state_dict().items()}
    state["loss.dummy"] = torch.zeros(1)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 1e-4}}, path)
    model = build_model(ModelConfig(image_size=TINY_SIZE, checkpoint=str(path)))
    assert torch.equal(model.no_mem_embed, hiera_t_sam2.no_mem_embed)


def test_checkpoint_of_another_size_names_keys_and_config(tmp_path, sam2_factory):
    small = sam2_factory("sam2.1_hiera_s")
    assert infer_official_config(small.state_dict()) == "sam2.1_hiera_s"
    path = tmp_path / "small.pt"
    torch.save({"model": small.state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        build_model(ModelConfig(config="sam2.1_hiera_t", image_size=TINY_SIZE, checkpoint=str(path)))
    msg = str(err.value)
    assert str(path) in msg and "unexpected keys" in msg and "image_encoder.trunk.blocks.12." in msg
    assert "model.config: sam2.1_hiera_s" in msg


def test_checkpoint_shape_mismatch_and_version(hiera_t_sam2, tmp_path):
    state = dict(hiera_t_sam2.state_dict())
    state["image_encoder.trunk.patch_embed.proj.weight"] = torch.zeros(112, 3, 7, 7)
    path = tmp_path / "forged.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*patch_embed.*\[112, 3, 7, 7\]"):
        build_model(ModelConfig(image_size=TINY_SIZE, checkpoint=str(path)))
    # A SAM 2.0 checkpoint lacks the 2.1-only tensors: missing keys, and the 2.0 config is suggested.
    state = {
        k: v
        for k, v in hiera_t_sam2.state_dict().items()
        if not k.startswith(("no_obj_embed", "obj_ptr_tpos"))
    }
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys, e\.g\. no_obj_embed_spatial.*sam2_hiera_t"):
        build_model(ModelConfig(image_size=TINY_SIZE, checkpoint=str(path)))


def test_missing_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(CheckpointNotFoundError, match=str(path)) as err:
        build_model(ModelConfig(image_size=TINY_SIZE, checkpoint=str(path)))
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"optimizer": [1, 2]}, path)
    with pytest.raises(CheckpointError, match=r"junk\.pt.*not a SAM 2 checkpoint"):
        build_model(ModelConfig(image_size=TINY_SIZE, checkpoint=str(path)))


def test_config_yaml_path(tmp_path, tiny_checkpoint):
    packaged = importlib.resources.files("sam2") / "configs/sam2.1/sam2.1_hiera_t.yaml"
    path = tmp_path / "my_sam2.yaml"
    shutil.copy(str(packaged), path)
    model = build_model(ModelConfig(config=str(path), image_size=160, checkpoint=str(tiny_checkpoint)))
    assert model.image_size == 160 and model.sam_prompt_encoder.input_image_size == (160, 160)
    assert sum(p.numel() for p in model.parameters()) == HIERA_T_PARAMS


def test_unknown_config_and_bad_yaml(tmp_path):
    assert resolve_model_config("configs/sam2/sam2_hiera_s.yaml").is_file()  # build_sam2's names work too
    with pytest.raises(ConfigError, match=r"sam2\.1_hiera_xl.*official config name"):
        build_model(ModelConfig(config="sam2.1_hiera_xl", image_size=TINY_SIZE))
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_epochs: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'model:'"):
        build_model(ModelConfig(config=str(path), image_size=TINY_SIZE))


def test_one_reader_for_every_checkpoint_kind(tmp_path):
    """`read_checkpoint` (build_model, export and predict all use it): official, Lightning with its stored config,
    bare state dict; errors name the flag and the file."""
    sd = {"no_mem_embed": torch.zeros(1, 1, 4)}
    official, lightning, bare = tmp_path / "official.pt", tmp_path / "last.ckpt", tmp_path / "bare.pt"
    torch.save({"model": sd}, official)
    tree = config_module.to_dict(config_module.load_config(None, [f"model.image_size={TINY_SIZE}"]))
    torch.save({"state_dict": {"model.no_mem_embed": sd["no_mem_embed"], "loss.w": torch.ones(1)},
                CONFIG_KEY: tree}, lightning)  # fmt: skip
    torch.save(sd, bare)
    for path in (official, lightning, bare):
        contents = read_checkpoint(path)
        assert contents.state_dict.keys() == sd.keys() and contents.path == path
    assert read_checkpoint(official).config() is None and read_checkpoint(bare).config() is None
    assert read_checkpoint(lightning).config().model.image_size == TINY_SIZE
    with pytest.raises(CheckpointNotFoundError, match=r"^--ckpt: checkpoint file not found: .*nowhere\.pt"):
        read_checkpoint(tmp_path / "nowhere.pt", "--ckpt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(CheckpointError, match=r"^--checkpoint .*junk\.pt: not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt", "--checkpoint")
    torch.save({"state_dict": {"loss.w": torch.ones(1)}}, lightning)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: Lightning checkpoint has no 'model\.' keys"):
        read_checkpoint(lightning)
