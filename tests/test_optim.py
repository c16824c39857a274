"""Parameter groups and LR schedules (optim.py): parity with Meta's fine-tuning recipe, the weight-decay
exemptions, frozen parameters, warmup + cosine per group, and unchanged lrs for a default config."""

from __future__ import annotations

import importlib
import logging
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR, StepLR

from sam2train.config import OptimizerConfig, SchedulerConfig, load_config
from sam2train.model.build import apply_trainable
from sam2train.train.module import SAM2LightningModule
from sam2train.train.optim import (
    WARMUP_START_FACTOR,
    build_optimizer,
    build_scheduler,
    param_groups,
)

MOSE_RECIPE = "sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
BLOCKS = 12  # hiera-t


@pytest.fixture
def sam2(hiera_t_sam2) -> torch.nn.Module:
    """The session's random hiera-t (the architecture of Meta's recipe, BLOCKS trunk blocks), everything
    trainable, for tests that only read it (building optimizers and stepping them without gradients changes no
    weight); tests that freeze parameters take `fresh_hiera_t_sam2`."""
    assert all(p.requires_grad for p in hiera_t_sam2.parameters())
    return hiera_t_sam2


def _by_param(groups: list[dict]) -> dict[torch.nn.Parameter, tuple[float, float]]:
    return {p: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def _meta_optimizer_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Meta's `training.optimizer`. Its recipe's lr schedulers come from fvcore, which we do not install: a stub
    module then carries fvcore's two schedulers (same formulas as fvcore.common.param_scheduler)."""
    try:
        importlib.import_module("fvcore.common.param_scheduler")
    except ModuleNotFoundError:

        class ConstantParamScheduler:
            def __init__(self, value: float) -> None:
                self.value = value

            def __call__(self, where: float) -> float:
                return self.value

        class CosineParamScheduler:
            def __init__(self, start_value: float, end_value: float) -> None:
                self.start, self.end = start_value, end_value

            def __call__(self, where: float) -> float:
                return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * where))

        stub = types.ModuleType("fvcore.common.param_scheduler")
        stub.ConstantParamScheduler = ConstantParamScheduler
        stub.CosineParamScheduler = CosineParamScheduler
        for name in ("fvcore", "fvcore.common"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, "fvcore.common.param_scheduler", stub)
        monkeypatch.setattr(sys.modules["fvcore.common"], "param_scheduler", stub, raising=False)
        monkeypatch.setattr(sys.modules["fvcore"], "common", sys.modules["fvcore.common"], raising=False)
    return importlib.import_module("training.optimizer")


def _mose_recipe() -> dict:
    """`scratch` and `trainer.optim` of Meta's MOSE fine-tuning recipe, resolved (`${divide:...}` included)."""
    import sam2

    recipe = OmegaConf.load(Path(sam2.__file__).parent.parent / MOSE_RECIPE)
    ours = not OmegaConf.has_resolver("divide")
    if ours:  # Meta registers it in its trainer's main; keep the global resolver registry as we found it
        OmegaConf.register_new_resolver("divide", lambda x, y: x / y)
    try:
        part = OmegaConf.create({"scratch": recipe.scratch, "optim": recipe.trainer.optim})
        return OmegaConf.to_container(part, resolve=True)
    finally:
        if ours:
            OmegaConf.clear_resolver("divide")


def test_groups_match_meta_mose_recipe(sam2, monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta's own construct_optimizer on the MOSE recipe and ours on the equivalent config give every parameter
    the same lr (base lr, encoder lr, per-block layer decay, pos_embed override) at the start, middle and end of
    the cosine, and the same weight decay except that our `norm` also exempts SAM 2's LayerNorm2d."""
    meta_optim = _meta_optimizer_module(monkeypatch)
    recipe = _mose_recipe()
    scratch, optim = recipe["scratch"], recipe["optim"]
    model = sam2
    meta = meta_optim.construct_optimizer(
        model, optim["optimizer"], optim["options"], optim["param_group_modifiers"]
    )
    cfg = OptimizerConfig(
        lr=scratch["base_lr"],
        image_encoder_lr=scratch["vision_lr"],
        layer_decay=optim["param_group_modifiers"][0]["layer_decay_value"],
        weight_decay=optim["options"]["weight_decay"][0]["scheduler"]["value"],
        no_weight_decay=["bias", "norm"],
    )
    total = 8
    ours_opt = build_optimizer(model, cfg)
    sched = build_scheduler(ours_opt, SchedulerConfig(interval="step", T_max=total, eta_min_ratio=0.1), 1)
    names = {p: n for n, p in model.named_parameters()}
    for step in range(total + 1):
        meta.step_schedulers(where=step / total, step=step)
        theirs, ours = _by_param(meta.optimizer.param_groups), _by_param(ours_opt.param_groups)
        assert set(ours) == set(theirs)
        for p, (lr, _) in theirs.items():
            assert ours[p][0] == pytest.approx(lr, rel=1e-9), (names[p], step)
        ours_opt.step()
        sched["scheduler"].step()
    layer_norm_2d = {
        m.weight for m in model.modules() if type(m).__name__ == "LayerNorm2d"
    }  # their biases are exempt by name in both
    wd_differs = {p for p in theirs if ours[p][1] != theirs[p][1]}
    assert wd_differs == layer_norm_2d and all(ours[p][1] == 0 for p in wd_differs)


@pytest.mark.parametrize("decay", [0.75, 1.0])
def test_layer_decay_matches_meta_modifier(sam2, monkeypatch, decay: float) -> None:
    """Per-parameter lr scale = Meta's layer_decay_param_modifier on the same named parameters (apply_to the
    trunk, `*pos_embed*` -> 1.0); block i of L gets decay^(L - i), the patch embedding decay^(L + 1)."""
    meta_optim = _meta_optimizer_module(monkeypatch)
    model = sam2
    names = {n for n, _ in model.named_parameters()}
    enc = {n for n in names if n.startswith("image_encoder.")}
    lrs = {"base": 1e-4, "enc": 2e-5}
    cfgs = [
        [
            {"option": "lr", "scheduler": lambda where: lrs["base"], "parameter_names": names - enc},
            {"option": "lr", "scheduler": lambda where: lrs["enc"], "parameter_names": enc},
        ]
    ]
    modified = meta_optim.layer_decay_param_modifier(
        cfgs,
        model,
        decay,
        apply_to="image_encoder.trunk",
        overrides=[{"pattern": "*pos_embed*", "value": 1.0}],
    )
    expected = {n: c["scheduler"](0.0) for c in modified[0] for n in c["parameter_names"]}
    assert set(expected) == names
    cfg = OptimizerConfig(lr=lrs["base"], image_encoder_lr=lrs["enc"], layer_decay=decay)
    ours = _by_param(param_groups(model, cfg))
    for name, p in model.named_parameters():
        assert ours[p][0] == pytest.approx(expected[name], rel=1e-12), name
    lr_of = {n: ours[p][0] for n, p in model.named_parameters()}
    for i in (0, 5, BLOCKS - 1):
        assert lr_of[f"image_encoder.trunk.blocks.{i}.mlp.layers.0.weight"] == pytest.approx(
            lrs["enc"] * decay ** (BLOCKS - i)
        )
    assert lr_of["image_encoder.trunk.patch_embed.proj.weight"] == pytest.approx(
        lrs["enc"] * decay ** (BLOCKS + 1)
    )
    assert (
        lr_of["image_encoder.trunk.pos_embed"] == lr_of["image_encoder.trunk.pos_embed_window"] == lrs["enc"]
    )
    assert lr_of["image_encoder.neck.convs.0.conv.weight"] == lrs["enc"]
    assert lr_of["memory_attention.norm.weight"] == lrs["base"]


def test_weight_decay_exemptions(sam2) -> None:
    """Biases, names with norm or pos_embed, and every parameter of a normalisation layer (LayerNorm2d too, whose
    parameters are named `...encoder.1.weight`) have weight decay 0; the rest `optimizer.weight_decay`."""
    model = sam2
    from sam2.modeling.sam2_utils import LayerNorm2d

    norm_params = {
        p for m in model.modules() if isinstance(m, (nn.LayerNorm, LayerNorm2d)) for p in m.parameters()
    }
    by_param = _by_param(param_groups(model, OptimizerConfig(weight_decay=0.1)))
    wd = {n: by_param[p][1] for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        exempt = p in norm_params or any(key in name for key in ("bias", "norm", "pos_embed"))
        assert wd[name] == (0.0 if exempt else 0.1), name
    assert wd["memory_encoder.mask_downsampler.encoder.1.weight"] == 0  # LayerNorm2d
    assert wd["sam_mask_decoder.output_upscaling.1.weight"] == 0  # LayerNorm2d
    assert wd["image_encoder.trunk.blocks.0.norm1.weight"] == wd["image_encoder.trunk.pos_embed"] == 0
    assert wd["memory_encoder.fuser.layers.0.pwconv1.weight"] == wd["maskmem_tpos_enc"] == 0.1
    # without `norm` listed, normalisation layers decay unless a name matches
    none = _by_param(param_groups(model, OptimizerConfig(weight_decay=0.1, no_weight_decay=["bias"])))
    named = dict(model.named_parameters())
    assert none[named["memory_encoder.mask_downsampler.encoder.1.weight"]][1] == 0.1
    assert none[named["memory_encoder.mask_downsampler.encoder.1.bias"]][1] == 0


def test_frozen_parameters_absent_and_each_trainable_in_one_group(fresh_hiera_t_sam2) -> None:
    model = fresh_hiera_t_sam2
    apply_trainable(model, ["image_encoder", "memory_attention"])
    cfg = OptimizerConfig(image_encoder_lr=1e-5, layer_decay=0.9, weight_decay=0.05)
    groups = param_groups(model, cfg)
    listed = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(listed) == len(set(listed)) == len(trainable) and set(listed) == set(trainable)
    assert not any(n.startswith("memory_encoder.") for n, p in model.named_parameters() if p in set(listed))
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys)), "groups with equal (lr, weight_decay) are merged"
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    assert names[:2] == ["base", "base/no_wd"] and groups[0]["lr"] == cfg.lr  # the logged lr is group 0's
    assert {"image_encoder", "image_encoder.trunk.blocks.0", "image_encoder.trunk.patch_embed/no_wd"} <= set(
        names
    )
    # 2 base + 2 encoder (neck, pos_embed) + 2 per block (weights, biases/norms) + patch embedding (2)
    assert len(groups) == 2 + 2 + 2 * BLOCKS + 2
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="model.trainable_modules"):
        param_groups(model, cfg)


def _warmup_cosine(step: int, base: float, warmup: int, total: int, ratio: float) -> float:
    if step < warmup:
        return base * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * step / warmup)
    t = min(step - warmup, total) / total
    return base * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@pytest.mark.parametrize(
    ("interval", "steps_per_epoch", "T_max"), [("step", 1, 10), ("epoch", 4, 3)], ids=["per-step", "epochs"]
)
def test_warmup_then_cosine_to_ratio_per_group(sam2, interval, steps_per_epoch, T_max) -> None:
    """Linear warmup over optimizer steps, then each group's own cosine to ratio * its lr (epoch lengths in
    optimizer steps with warmup), then flat at the floor."""
    cfg = OptimizerConfig(lr=1e-4, image_encoder_lr=2e-5, layer_decay=0.8)
    opt = build_optimizer(sam2, cfg)
    base = [g["lr"] for g in opt.param_groups]
    assert len(set(base)) > 10
    sch_cfg = SchedulerConfig(warmup_steps=3, interval=interval, T_max=T_max, eta_min_ratio=0.25)
    sched = build_scheduler(opt, sch_cfg, steps_per_epoch)
    assert sched["interval"] == "step"
    total = T_max * steps_per_epoch
    for step in range(3 + total + 3):
        for g, b in zip(opt.param_groups, base):
            assert g["lr"] == pytest.approx(_warmup_cosine(step, b, 3, total, 0.25), rel=1e-9), (
                g["name"],
                step,
            )
        opt.step()
        sched["scheduler"].step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25 * b for b in base], rel=1e-9)


def _previous_schedule(model: torch.nn.Module, opt_cfg: OptimizerConfig, sch_cfg: SchedulerConfig, unit: int):
    """configure_optimizers before parameter groups: one group of all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, betas=tuple(opt_cfg.betas)
    )
    if sch_cfg.type == "CosineAnnealingLR":
        sched = CosineAnnealingLR(opt, T_max=sch_cfg.T_max * unit, eta_min=sch_cfg.eta_min)
    else:
        sched = StepLR(opt, step_size=sch_cfg.step_size * unit, gamma=sch_cfg.gamma)
    if sch_cfg.warmup_steps > 0:
        warmup = LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=sch_cfg.warmup_steps)
        sched = SequentialLR(opt, [warmup, sched], milestones=[sch_cfg.warmup_steps])
    return opt, sched


@pytest.mark.parametrize(
    "overrides",
    [{}, {"warmup_steps": 4, "interval": "step"}, {"warmup_steps": 2}, {"type": "StepLR", "step_size": 3}],
    ids=["cosine-epoch", "warmup-step", "warmup-epoch", "step-lr"],
)
def test_default_config_gives_the_previous_lrs(sam2, overrides: dict) -> None:
    model = sam2
    opt_cfg, sch_cfg = OptimizerConfig(), SchedulerConfig(**overrides)
    unit = 5 if sch_cfg.warmup_steps and sch_cfg.interval == "epoch" else 1
    old_opt, old = _previous_schedule(model, opt_cfg, sch_cfg, unit)
    opt = build_optimizer(model, opt_cfg)
    new = build_scheduler(opt, sch_cfg, steps_per_epoch=5)
    assert new["interval"] == ("step" if sch_cfg.warmup_steps or sch_cfg.interval == "step" else "epoch")
    assert opt.defaults["weight_decay"] == opt_cfg.weight_decay and opt.defaults["betas"] == (0.9, 0.999)
    for step in range(40):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([old_opt.param_groups[0]["lr"]] * 2), step
        for o, s in ((old_opt, old), (opt, new["scheduler"])):
            o.step()
            s.step()


def test_lightning_module_uses_the_groups(fresh_hiera_t_sam2, caplog) -> None:
    """configure_optimizers builds the groups from `self.model` and logs each group once at info level."""
    cfg = load_config(
        None,
        [
            "model.image_size=128",
            "optimizer.image_encoder_lr=1e-5",
            "optimizer.layer_decay=0.9",
            "scheduler.interval=step",
            "scheduler.eta_min_ratio=0.1",
        ],
    )
    m = SAM2LightningModule(cfg)
    m.model = fresh_hiera_t_sam2
    apply_trainable(m.model, ["image_encoder", "memory_attention"])
    caplog.set_level(logging.INFO, logger="sam2train")
    # a handler of our own: the CLI's handler, or propagation turned off, must not change the count
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("sam2train").addHandler(handler)
    try:
        conf = m.configure_optimizers()
    finally:
        logging.getLogger("sam2train").removeHandler(handler)
    groups = conf["optimizer"].param_groups
    assert {p for g in groups for p in g["params"]} == {p for p in m.model.parameters() if p.requires_grad}
    assert [g["lr"] for g in groups] == [g["lr"] for g in param_groups(m.model, cfg.optimizer)]
    assert conf["lr_scheduler"]["interval"] == "step"
    logged = [r.getMessage() for r in records if "parameter groups" in r.getMessage()]
    assert len(logged) == 1
    assert (
        all(f"  {g['name']}: " in logged[0] for g in groups) and "image_encoder.trunk.blocks.11" in logged[0]
    )
