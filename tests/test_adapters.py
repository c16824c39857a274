"""LoRA adapters (`model.adapters`, through peft): only the adapters (and `trainable_modules`) train and carry
optimizer state, merging keeps the outputs, checkpoints resume and export (merged, or the adapters alone), and the
adapters work with activation checkpointing, object chunks, the feature cache, bf16 and DDP."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEMO_CONFIG, REPO, TINY_CONFIG, build_random_sam2, fit_args, no_dropout
from sam2train.cli import main
from sam2train.config import AdapterConfig, Config, ModelConfig, load_config
from sam2train.errors import CheckpointError, ConfigError
from sam2train.losses import build_loss
from sam2train.model.adapters import is_adapter_parameter
from sam2train.model.build import build_for_training, build_model, parameter_report
from sam2train.model.checkpoints import CheckpointContents
from sam2train.model.video import run_video
from sam2train.train.optim import build_optimizer

LORA = ["image_encoder", "memory_attention", "sam_mask_decoder"]
LORA_ARGS = ["model.adapters.type=lora", f"model.adapters.targets=[{','.join(LORA)}]"]


def _model_cfg(**kw) -> ModelConfig:
    adapters = AdapterConfig(type="lora", targets=kw.pop("targets", LORA), r=4)
    return ModelConfig(
        config=TINY_CONFIG, image_size=128, trainable_modules=["memory_encoder"], adapters=adapters, **kw
    )


def _adapted(seed: int = 0, **kw) -> torch.nn.Module:
    """The tiny SAM 2 with adapters (memory_encoder fully trained); random B so that the adapters act."""
    torch.manual_seed(seed)
    model, _ = build_for_training(_model_cfg(**kw), load_weights=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def test_only_adapters_and_trainable_modules_train_and_hold_optimizer_state(make_video_batch) -> None:
    model = no_dropout(_adapted())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n, _ in model.named_parameters() if is_adapter_parameter(n)}
    memory_encoder = {n for n, _ in model.named_parameters() if n.startswith("memory_encoder.")}
    assert lora and trainable == lora | memory_encoder
    assert {n.split(".")[0] for n in lora} == set(LORA)
    assert any(".base_layer." in n for n in model.state_dict())  # peft's names, in checkpoints too
    report = parameter_report(model)
    assert (
        report["image_encoder"][1] == 0
        and report["image_encoder lora"][0] == report["image_encoder lora"][1] > 0
    )
    assert "memory_encoder lora" not in report and report["memory_encoder"][1] == report["memory_encoder"][0]

    optimizer = build_optimizer(model, Config().optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = make_video_batch(kinds=[["mask", "box"]], t=2)
    loss = build_loss(Config()).video_loss(run_video(model, batch), batch)
    loss.total.backward()
    optimizer.step()
    # frozen base weights: no gradient, no AdamW state, unchanged
    stateful = {id(p) for p in optimizer.state}
    for name, p in model.named_parameters():
        assert (id(p) in stateful) == (name in trainable), name
        if name not in trainable:
            assert p.grad is None and torch.equal(p, before[name]), name
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in lora if "lora_B" in n} <= changed and memory_encoder & changed


def test_merged_model_gives_the_adapter_models_outputs_under_metas_keys(make_video_batch) -> None:
    from sam2train.eval.export import build_with_weights

    model = _adapted(seed=1).eval()
    cfg = _model_cfg()
    contents = CheckpointContents(Path("x.ckpt"), model.state_dict(), None, "x.ckpt")
    merged = build_with_weights(cfg, contents).eval()
    plain = build_random_sam2()
    assert merged.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(merged.state_dict(), strict=True)
    batch = make_video_batch(kinds=[["mask", "point"]], t=2)
    with torch.no_grad():
        a, b = run_video(model, batch), run_video(merged, batch)
    assert a.low_res_logits.abs().max() > 0
    torch.testing.assert_close(b.low_res_logits, a.low_res_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.iou_pred, a.iou_pred, atol=1e-5, rtol=1e-5)


def test_unknown_target_group_is_an_error_naming_it(tmp_path: Path) -> None:
    yaml = tmp_path / "bad.yaml"
    yaml.write_text(
        "base: " + str(DEMO_CONFIG) + "\nmodel:\n  adapters:\n    type: lora\n    targets: [image_encodr]\n"
    )
    with pytest.raises(ConfigError, match=r"model\.adapters\.targets\[0\].*'image_encodr'.*'image_encoder'"):
        load_config(yaml)
    with pytest.raises(ConfigError, match=r"'sam_mask_decoder'\] also train fully"):
        load_config(DEMO_CONFIG, ["model.adapters.type=lora", "model.adapters.targets=[sam_mask_decoder]"])
    with pytest.raises(ConfigError, match="model.cache_features"):
        load_config(DEMO_CONFIG, [*LORA_ARGS, "model.trainable_modules=[]", "model.cache_features=true"])
    # a module-name pattern that matches nothing, and one peft cannot adapt
    for pattern, message in (
        (r"nothing\.here", "matches no layer"),
        (r"image_encoder\.trunk", "not supported"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_for_training(_model_cfg(targets=[pattern]), load_weights=False)


@pytest.mark.slow
def test_activation_checkpointing_keeps_the_adapter_gradients(make_video_batch) -> None:
    batch = make_video_batch(kinds=[["mask", "box"]], t=2)
    grads = []
    for on in (False, True):
        model = no_dropout(_adapted(seed=2, activation_checkpointing=on, checkpoint_image_encoder=on))
        loss = build_loss(Config()).video_loss(run_video(model, batch), batch)
        loss.total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("image_encoder" in n and "lora" in n for n in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_object_chunks_give_the_adapter_gradients(make_video_batch) -> None:
    from test_object_chunk import assert_same_gradients, chunked_step, unchunked_step

    model = no_dropout(_adapted(seed=3))
    batch = make_video_batch(kinds=[["mask", "box"]], t=2)
    cfg = Config()
    _, ref = unchunked_step(model, batch, cfg)
    _, got = chunked_step(model, batch, replace(cfg, model=replace(cfg.model, object_chunk=1)))
    assert any("lora_B" in n for n in ref)
    assert_same_gradients(ref, got)


# ------------------------------------------------------------------------------------------ fit, export, predict


@pytest.fixture(scope="module")
def base_pt(tmp_path_factory) -> Path:
    """A base checkpoint `{"model": sd}` of the random tiny SAM 2 whose objects are always present."""
    model = build_random_sam2(seed=5)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    path = tmp_path_factory.mktemp("base") / "base.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def lora_run(base_pt: Path, demo_data: Path, tmp_path_factory) -> dict:
    """2 steps of `fit` with the shipped LoRA recipe on the tiny model from `base_pt`, and its last checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    args = fit_args(root, config=REPO / "configs" / "lora.yaml", data=demo_data, steps=2, version="v0") + [
        f"model.checkpoint={base_pt}",
        "model.adapters.r=4",
        "data.max_objects=2",
        "trainer.precision=32",
    ]
    with redirect_stdout(io.StringIO()):
        assert main(args) == 0
    run = root / "lora" / "v0"
    return {"ckpt": run / "checkpoints" / "last.ckpt", "run": run, "args": args, "root": root}


def test_lora_recipe_fits_and_reports_adapters(lora_run: dict) -> None:
    final = json.loads((lora_run["run"] / "final_metrics.json").read_text())
    per_group = final["parameters"]["per_group"]
    assert per_group["image_encoder"]["trainable"] == 0 and per_group["image_encoder lora"]["trainable"] > 0
    assert per_group["memory_attention"]["trainable"] == per_group["memory_attention"]["total"]
    state = torch.load(lora_run["ckpt"], map_location="cpu", weights_only=False)
    keys = state["state_dict"].keys()
    assert any(k.endswith("qkv.lora_A.default.weight") for k in keys)
    # AdamW state only for trainable tensors: adapters and the memory modules
    trainable = sum(per_group[g]["trainable"] > 0 for g in per_group)
    assert trainable >= 5 and len(state["optimizer_states"][0]["state"]) < len(keys) / 2


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.array(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def _predict(ckpt: Path, frames: Path, mask: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    argv = ["predict", "--checkpoint", str(ckpt), "--frames", str(frames), "--prompt-mask", str(mask)]
    with redirect_stdout(io.StringIO()):
        assert main([*argv, "--out", str(out), "--device", "cpu", *extra]) == 0
    return _pngs(out)


def test_export_merges_and_adapters_only_round_trips(
    lora_run: dict, base_pt: Path, demo_data: Path, tmp_path
) -> None:
    ckpt = lora_run["ckpt"]
    merged = tmp_path / "merged.pt"
    with redirect_stdout(io.StringIO()):
        assert main(["export", "--ckpt", str(ckpt), "--out", str(merged)]) == 0
        assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "lora"), "--adapters-only"]) == 0
    sd = torch.load(merged, weights_only=True)["model"]
    assert not any(".base_layer." in k or "lora_" in k for k in sd)
    build_model(ModelConfig(config=TINY_CONFIG, image_size=128, checkpoint=str(merged)))  # strict keys
    folder = tmp_path / "lora"
    assert {p.name for p in folder.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "trained_modules.safetensors"
    }  # fmt: skip
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_pt)

    video = next((demo_data / "val" / "JPEGImages").iterdir())
    mask = sorted((demo_data / "val" / "Annotations" / video.name).glob("*.png"))[0]
    ours = _predict(ckpt, video, mask, tmp_path / "p_ckpt")
    assert any(len(np.unique(m)) > 1 for m in ours.values())
    exported = _predict(merged, video, mask, tmp_path / "p_merged")  # merged.yaml beside it: 128 px
    base = ["--model-config", TINY_CONFIG, "--image-size", "128"]
    plus = _predict(base_pt, video, mask, tmp_path / "p_base", *base, "--adapters", str(folder))
    for name, labels in ours.items():
        assert np.array_equal(exported[name], labels) and np.array_equal(plus[name], labels), name

    # model.adapters.path: the base + the folder rebuild the checkpoint's weights
    cfg = load_config(REPO / "configs" / "lora.yaml", [a for a in lora_run["args"] if "=" in a])
    model_cfg = replace(cfg.model, adapters=replace(cfg.model.adapters, path=str(folder)))
    rebuilt, _ = build_for_training(model_cfg)
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, trained[f"model.{key}"]), key
    # on other base weights: refused, naming the folder
    other = tmp_path / "other.pt"
    torch.save({"model": build_random_sam2(seed=9).state_dict()}, other)
    with pytest.raises(CheckpointError, match="other base weights"):
        build_for_training(replace(model_cfg, checkpoint=str(other)))


@pytest.mark.slow
def test_resume_with_adapters_is_bit_identical(base_pt: Path, demo_data: Path, tmp_path: Path) -> None:
    def fit(version: str, epochs: int, *extra: str) -> dict[str, torch.Tensor]:
        args = fit_args(
            tmp_path, *LORA_ARGS, "data.val_path=null", data=demo_data, val=False, version=version
        )
        args += [
            f"model.checkpoint={base_pt}",
            "model.trainable_modules=[memory_encoder]",
            "data.max_objects=1",
        ]
        args += ["trainer.limit_train_batches=1", f"trainer.max_epochs={epochs}", "scheduler.warmup_steps=0"]
        with redirect_stdout(io.StringIO()):
            assert main([*args, *extra]) == 0
        ckpt = tmp_path / "demo" / version / "checkpoints" / "last.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    straight = fit("straight", 2)
    fit("first", 1)
    resumed = fit("resumed", 2, "--ckpt", str(tmp_path / "demo" / "first" / "checkpoints" / "last.ckpt"))
    assert straight.keys() == resumed.keys()
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in resumed.items())
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.slow
def test_feature_cache_and_bf16_with_adapters_off_the_encoder(demo_data: Path, tmp_path: Path) -> None:
    args = fit_args(tmp_path, "data.val_path=null", data=demo_data, val=False, steps=1, version="v")
    args += ["model.adapters.type=lora", "model.adapters.targets=[memory_attention,sam_mask_decoder]"]
    args += ["model.trainable_modules=[memory_encoder]", "data.augment=false", "model.cache_features=true"]
    args += [f"model.cache_dir={tmp_path / 'cache'}", "trainer.precision=bf16-mixed"]
    with redirect_stdout(io.StringIO()):
        assert main(args) == 0
    assert list((tmp_path / "cache").rglob("*.f16"))
    final = json.loads((tmp_path / "demo" / "v" / "final_metrics.json").read_text())
    assert final["parameters"]["per_group"]["sam_mask_decoder lora"]["trainable"] > 0


@pytest.mark.slow
def test_export_loads_strictly_into_metas_predictor_with_the_adapter_models_masks(
    tmp_path, shared_data
) -> None:
    """hiera t at 256 px with acting adapters: our predict on the Lightning checkpoint (adapters unmerged) and
    Meta's SAM2VideoPredictor on the merged export track DAVIS blackswan alike."""
    import shutil

    from sam2.build_sam import build_sam2_video_predictor

    from sam2train.config import to_dict
    from test_predict_export import FRAMES, SEQUENCE, SIZE, _assert_same, _meta_masks

    cfg = load_config(
        None, [f"model.image_size={SIZE}", *LORA_ARGS, "model.trainable_modules=[memory_encoder]"]
    )
    torch.manual_seed(0)
    model, _ = build_for_training(cfg.model, load_weights=False)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    ckpt = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "sam2train_config": to_dict(cfg)}, ckpt)
    with redirect_stdout(io.StringIO()):
        assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "merged.pt")]) == 0
    predictor = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        str(tmp_path / "merged.pt"),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={SIZE}"],
    )  # strict keys inside
    root = shared_data / "davis2016"
    frames = tmp_path / SEQUENCE
    frames.mkdir()
    for path in sorted((root / "JPEGImages" / "480p" / SEQUENCE).glob("*.jpg"))[:FRAMES]:
        shutil.copy(path, frames / path.name)
    mask_png = root / "Annotations" / "480p" / SEQUENCE / "00000.png"
    ours = _predict(ckpt, frames, mask_png, tmp_path / "ours")
    _assert_same(ours, _meta_masks(predictor, frames, {1: {"mask": np.array(Image.open(mask_png)) > 0}}))


# ------------------------------------------------------------------------------------------------------ DDP


def capture_adapter_gradients(out: Path, devices: int) -> None:
    """One step of the Lightning module with adapters (image encoder, memory attention, decoder) and the memory
    encoder fully trained, on test_distributed's two clips: one process, or DDP with one clip per rank."""
    from sam2train.batch import collate_videos
    from sam2train.train.module import SAM2LightningModule
    from sam2train.train.trainer import resolve_strategy
    from test_distributed import SIZE, SaveGradients, _clips

    overrides = [f"model.config={TINY_CONFIG}", f"model.image_size={SIZE}", "data.clip_length=2"]
    overrides += [*LORA_ARGS, "model.trainable_modules=[memory_encoder]", "trainer.strategy=ddp"]
    cfg = load_config(DEMO_CONFIG, [*overrides, "scheduler.enabled=false"])
    L.seed_everything(0, verbose=False)
    module = SAM2LightningModule(cfg)
    module.build(load_weights=False)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    no_dropout(module.model)
    loader = torch.utils.data.DataLoader(_clips(), batch_size=2 // devices, collate_fn=collate_videos)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=resolve_strategy(cfg) if devices > 1 else "auto",
        max_steps=1,
        default_root_dir=out.parent,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveGradients(out)],
    )
    trainer.fit(module, train_dataloaders=loader)


@pytest.mark.slow
def test_ddp_adapter_gradients_equal_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    ddp = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "ddp.pt"), "2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    capture_adapter_gradients(tmp_path / "one.pt", devices=1)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "ddp.pt")
    assert one.keys() == two.keys()
    lora = [k for k in one if "lora_" in k]
    g1 = torch.cat([one[k].flatten() for k in lora]).double()
    g2 = torch.cat([two[k].flatten() for k in lora]).double()
    assert g1.norm() > 0 and (g1 - g2).norm() <= 1e-5 * g1.norm()
    frozen = [k for k in one if "lora_" not in k and not k.startswith("memory_encoder.")]
    assert all(one[k].abs().sum() == 0 and two[k].abs().sum() == 0 for k in frozen)


if __name__ == "__main__":
    capture_adapter_gradients(Path(sys.argv[1]), int(sys.argv[2]))
