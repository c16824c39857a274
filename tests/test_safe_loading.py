"""Weights files cannot run code: every path that reads one (fit model.checkpoint, fit/validate --ckpt, predict,
export) refuses a pickle that carries a payload, naming the file, and never runs it; the opt-in loads a legitimate
legacy file. Every checkpoint kind we write loads with `weights_only=True` and records its version; a resume whose
optimizer groups differ says so and `--ckpt-weights-only` starts from the weights; safetensors round trip."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CONFIG, TINY_SIZE, build_random_sam2, fit_args
from sam2train import __version__
from sam2train.cli import main
from sam2train.config import ModelConfig, load_config, to_dict
from sam2train.errors import ConfigError, UnsafeCheckpointError
from sam2train.model.build import build_model
from sam2train.model.checkpoints import CONFIG_KEY, read_checkpoint
from sam2train.train.module import SAM2LightningModule
from sam2train.train.versions import CHECKPOINT_FORMAT, FORMAT_KEY, VERSION_KEY


class Payload:
    """Unpickling this runs `touch MARKER` (what a stranger's file could do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Legacy:
    """A harmless custom object, as older tools pickled into checkpoints (the safe loader refuses it too)."""

    def __init__(self, note: str) -> None:
        self.note = note


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return build_random_sam2().state_dict()


@pytest.fixture(scope="module")
def tree() -> dict:
    return to_dict(load_config(None, [f"model.config={TINY_CONFIG}", f"model.image_size={TINY_SIZE}"]))


def _save(path: Path, weights: dict, tree: dict, style: str, extra: object) -> Path:
    if style == "official":
        torch.save({"model": weights, "extra": extra}, path)
    else:
        torch.save(
            {"state_dict": {f"model.{k}": v for k, v in weights.items()}, CONFIG_KEY: tree, "x": extra}, path
        )
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 64x64 frames and a first-frame mask (mask.png beside the folder)."""
    root = tmp_path_factory.mktemp("frames")
    folder = root / "clip"
    folder.mkdir()
    for t in range(2):
        img = np.zeros((64, 64, 3), dtype=np.uint8)
        img[16 + t : 40 + t, 16:40] = 220
        Image.fromarray(img).save(folder / f"{t:05d}.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 16:40] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return folder


def _predict_args(ckpt: Path, frames: Path, out: Path, *extra: str) -> list[str]:
    prompt = ["--prompt-mask", str(frames.parent / "mask.png")]
    return ["predict", "--checkpoint", str(ckpt), "--frames", str(frames), "--out", str(out), *prompt, *extra]


def _reading_paths(file: Path, tmp: Path, demo: Path, frames: Path) -> dict[str, list[str]]:
    fit = fit_args(tmp / "runs", data=demo, steps=1)
    return {
        "fit model.checkpoint": [*fit, f"model.checkpoint={file}"],
        "fit --ckpt": [*fit, "--ckpt", str(file)],
        "validate --ckpt": ["validate", *fit[1:], "--ckpt", str(file)],
        "predict": _predict_args(file, frames, tmp / "pred", "--model-config", TINY_CONFIG),
        "export": ["export", "--ckpt", str(file), "--out", str(tmp / "out.pt")],
    }


@pytest.mark.parametrize("style", ["official", "lightning"])
@pytest.mark.parametrize(
    "path", ["fit model.checkpoint", "fit --ckpt", "validate --ckpt", "predict", "export"]
)
def test_a_payload_is_refused_on_every_reading_path_and_never_runs(
    style, path, weights, tree, demo_data, frames, tmp_path, capsys
):
    marker = tmp_path / "MARKER"
    file = _save(tmp_path / f"{style}.pt", weights, tree, style, Payload(marker))
    assert main(_reading_paths(file, tmp_path, demo_data, frames)[path]) == 2
    err = capsys.readouterr().err
    assert str(file) in err and "refused" in err and "posix.system" in err, err[-2000:]
    assert ("model.trust_checkpoint=true" if path == "fit model.checkpoint" else "--trust-checkpoint") in err
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def test_the_opt_in_loads_a_legitimate_legacy_file(weights, tree, frames, tmp_path, capsys):
    official = _save(tmp_path / "official.pt", weights, tree, "official", Legacy("old tool"))
    lightning = _save(tmp_path / "lightning.ckpt", weights, tree, "lightning", Legacy("old tool"))
    with pytest.raises(UnsafeCheckpointError, match=r"official\.pt.*Legacy.*model\.trust_checkpoint=true"):
        build_model(ModelConfig(config=TINY_CONFIG, image_size=TINY_SIZE, checkpoint=str(official)))
    cfg = ModelConfig(
        config=TINY_CONFIG, image_size=TINY_SIZE, checkpoint=str(official), trust_checkpoint=True
    )
    model = build_model(cfg)
    assert torch.equal(model.state_dict()["no_mem_embed"], weights["no_mem_embed"])
    out = tmp_path / "x.pt"
    assert main(["export", "--ckpt", str(lightning), "--out", str(out), "--trust-checkpoint"]) == 0
    assert torch.equal(torch.load(out, weights_only=True)["model"]["no_mem_embed"], weights["no_mem_embed"])
    args = _predict_args(
        official, frames, tmp_path / "pred", "--model-config", TINY_CONFIG, "--device", "cpu"
    )
    assert main(args) == 2 and "--trust-checkpoint" in capsys.readouterr().err
    assert main([*args, "--trust-checkpoint"]) == 0
    assert len(list((tmp_path / "pred" / "clip").glob("*.png"))) == 2


def test_a_config_yaml_tag_that_constructs_objects_is_an_error_naming_the_file(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml"):
        load_config(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ our checkpoints, resume


def _ckpts(root: Path, version: str) -> Path:
    return root / "demo" / version / "checkpoints"


def _assert_safe_and_stamped(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt[VERSION_KEY] == __version__ and ckpt[FORMAT_KEY] == CHECKPOINT_FORMAT, path
    return ckpt


def _sigterm_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    def on_train_batch_end(self, *args) -> None:
        if self.trainer.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SAM2LightningModule, "on_train_batch_end", on_train_batch_end, raising=False)


@pytest.mark.slow  # five short fits
def test_every_checkpoint_we_write_loads_weights_only_and_resume_checks_the_optimizer_groups(
    demo_data, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "runs"
    small = ("model.image_size=64", "trainer.log_every_n_steps=1", "logging.loggers=[csv]")
    # best (with validation) and last
    assert main(fit_args(root, *small, data=demo_data, steps=1, version="best")) == 0
    best = [p for p in _ckpts(root, "best").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1
    for path in (*best, _ckpts(root, "best") / "last.ckpt"):
        _assert_safe_and_stamped(path)
    # periodic (every_n_train_steps) and the SIGTERM save
    periodic = ("checkpoint.every_n_train_steps=1", "trainer.max_steps=4", "trainer.limit_train_batches=4")
    periodic = (*periodic, "data.val_path=null")
    args = fit_args(root, *small, *periodic, data=demo_data, val=False, version="stop")
    _sigterm_at_step(monkeypatch, 2)
    assert main(args) == 128 + signal.SIGTERM
    monkeypatch.undo()
    last = _ckpts(root, "stop") / "last.ckpt"
    assert _assert_safe_and_stamped(last)["global_step"] == 2
    steps = [p for p in _ckpts(root, "stop").glob("epoch*.ckpt")]
    assert steps and all(_assert_safe_and_stamped(p) for p in steps)

    # a legacy object in it: refused, and resumed with the opt-in
    ckpt = torch.load(last, weights_only=True)
    torch.save({**ckpt, "legacy": Legacy("old tool")}, last)
    resume = fit_args(root, *small, *periodic, data=demo_data, val=False, version="resumed")
    assert main([*resume, "--ckpt", str(last)]) == 2
    assert str(last) in capsys.readouterr().err
    assert main([*resume, "--ckpt", str(last), "--trust-checkpoint"]) == 0
    assert _assert_safe_and_stamped(_ckpts(root, "resumed") / "last.ckpt")["global_step"] == 4

    # other trainable modules: other optimizer groups
    changed = (*resume, "logging.version=changed", "model.trainable_modules=[sam_mask_decoder]")
    assert main([*changed, "--ckpt", str(last), "--trust-checkpoint"]) == 2
    err = capsys.readouterr().err
    assert f"--ckpt {last}" in err and "optimizer parameter groups" in err and "--ckpt-weights-only" in err
    assert f"sam2train {__version__}" in err and "tensors" in err, err[-2000:]
    assert main([*changed, "--ckpt", str(last), "--trust-checkpoint", "--ckpt-weights-only"]) == 0
    new = _assert_safe_and_stamped(_ckpts(root, "changed") / "last.ckpt")
    assert new["global_step"] == 4  # a new run: 4 steps from 0, not 2 more
    assert new[CONFIG_KEY]["model"]["checkpoint"] == str(last)


# ------------------------------------------------------------------------------------------------- safetensors


@pytest.fixture(scope="module")
def lightning_ckpt(weights, tree, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("st") / "run.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}, CONFIG_KEY: tree}, path)
    return path


def _masks(folder: Path) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_safetensors_export_round_trip_needs_no_pickle(lightning_ckpt, frames, tmp_path, monkeypatch):
    from sam2.build_sam import _load_checkpoint as meta_load_checkpoint  # Meta's reader of a .pt

    pt, st = tmp_path / "tuned.pt", tmp_path / "tuned.safetensors"
    assert main(["export", "--ckpt", str(lightning_ckpt), "--out", str(pt)]) == 0
    assert main(["export", "--ckpt", str(lightning_ckpt), "--out", str(st), "--format", "safetensors"]) == 0
    assert main(["export", "--ckpt", str(lightning_ckpt), "--out", str(st), "--format", "pt"]) == 2
    assert read_checkpoint(st).config().model.config == TINY_CONFIG  # the config travels in the metadata

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called for a safetensors file")

    with monkeypatch.context() as m:  # predict and export of a safetensors file unpickle nothing
        m.setattr(torch, "load", no_pickle)
        assert main(_predict_args(st, frames, tmp_path / "from_st", "--device", "cpu")) == 0
        again = tmp_path / "again.pt"
        assert main(["export", "--ckpt", str(st), "--out", str(again)]) == 0
    assert main(_predict_args(pt, frames, tmp_path / "from_pt", "--device", "cpu")) == 0
    ours, theirs = _masks(tmp_path / "from_st" / "clip"), _masks(tmp_path / "from_pt" / "clip")
    assert len(ours) == 2 and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    exported, rewritten = (
        torch.load(pt, weights_only=True)["model"],
        torch.load(again, weights_only=True)["model"],
    )
    assert exported.keys() == rewritten.keys() and all(
        torch.equal(exported[k], rewritten[k]) for k in exported
    )
    model = build_random_sam2(seed=1)
    meta_load_checkpoint(model, str(again))  # strict keys, as build_sam2_video_predictor loads it
    assert all(torch.equal(v, exported[k]) for k, v in model.state_dict().items())


def test_a_model_yaml_builds_only_sam2_classes(tmp_path):
    marker = tmp_path / "MARKER"
    tag, target = tmp_path / "tag.yaml", tmp_path / "target.yaml"
    tag.write_text(f"model:\n  _target_: !!python/object/apply:os.system ['touch {marker}']\n")
    target.write_text(f"model:\n  _target_: subprocess.run\n  args: ['touch', '{marker}']\n")
    for path in (tag, target):
        with pytest.raises(ConfigError, match=rf"{path.name}"):
            build_model(ModelConfig(config=str(path), image_size=TINY_SIZE))
    assert not marker.exists()


@pytest.mark.slow
def test_meta_predictor_on_the_pt_written_from_safetensors_matches_our_predict(
    shared_data, sam2_factory, tmp_path
):
    import shutil
    import warnings

    from sam2.build_sam import build_sam2_video_predictor

    size, src = 256, shared_data / "davis2016" / "JPEGImages" / "480p" / "blackswan"
    frames = tmp_path / "blackswan"
    frames.mkdir()
    for path in sorted(src.glob("*.jpg"))[:3]:
        shutil.copy(path, frames / path.name)
    mask_png = shared_data / "davis2016" / "Annotations" / "480p" / "blackswan" / "00000.png"
    model = sam2_factory("sam2.1_hiera_t", image_size=size)
    with torch.no_grad():  # random object scores sit near 0: every tracked mask would be -1024
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    ckpt, st, pt = tmp_path / "run.ckpt", tmp_path / "tuned.safetensors", tmp_path / "tuned.pt"
    tree = to_dict(load_config(None, [f"model.image_size={size}"]))
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CONFIG_KEY: tree}, ckpt
    )
    assert main(["export", "--ckpt", str(ckpt), "--out", str(st), "--format", "safetensors"]) == 0
    assert main(["export", "--ckpt", str(st), "--out", str(pt)]) == 0
    prompt = ["--prompt-mask", str(mask_png), "--device", "cpu"]
    args = [
        "predict",
        "--checkpoint",
        str(st),
        "--frames",
        str(frames),
        "--out",
        str(tmp_path / "ours"),
        *prompt,
    ]
    assert main(args) == 0
    ours = _masks(tmp_path / "ours" / "blackswan")
    predictor = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        str(pt),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={size}"],
    )
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # hole filling needs the compiled sam2._C extension
        state = predictor.init_state(video_path=str(frames))
        predictor.add_new_mask(state, 0, 1, np.array(Image.open(mask_png)) > 0)
        theirs = [(logits[0, 0] > 0).numpy() for _, _, logits in predictor.propagate_in_video(state)]
    assert len(ours) == len(theirs) == 3
    for t, (labels, ref) in enumerate(zip(ours, theirs)):
        pred = labels == 1
        assert 0.01 < ref.mean() < 0.99, "trivial masks make parity meaningless"
        assert (pred & ref).sum() / (pred | ref).sum() >= 0.99, f"frame {t}"


def test_a_resume_needs_a_run_checkpoint_with_the_same_optimizer_groups(
    weights, tree, demo_data, tmp_path, capsys
):
    from sam2train.errors import CheckpointError
    from sam2train.train.versions import check_format, check_optimizer_groups

    official = _save(tmp_path / "official.pt", weights, tree, "official", None)
    fit = fit_args(tmp_path / "runs", data=demo_data, steps=1)
    assert main([*fit, "--ckpt", str(official)]) == 2
    err = capsys.readouterr().err
    assert str(official) in err and "weights only" in err and "--ckpt-weights-only" in err
    assert main([*fit, "--ckpt-weights-only"]) == 2 and "--ckpt FILE" in capsys.readouterr().err

    now = [{"name": "base", "params": [0, 1, 2], "lr": 1e-4, "weight_decay": 0.01}]
    stored = [{"name": "base", "params": [0, 1, 2], "initial_lr": 1e-4, "lr": 3e-5, "weight_decay": 0.01}]
    check_optimizer_groups({"optimizer_states": [{"param_groups": stored}]}, now, "--ckpt x.ckpt")  # fits
    for changed, says in [
        ([{**stored[0], "params": [0, 1]}], "2 -> 3 tensors"),
        ([{**stored[0], "initial_lr": 1e-3}], "lr 0.001 -> 0.0001"),
        ([{**stored[0], "name": "image_encoder"}], "name 'image_encoder' -> 'base'"),
        ([*stored, stored[0]], "2 groups in the checkpoint"),
    ]:
        with pytest.raises(CheckpointError, match=rf"^--ckpt x\.ckpt: .*{says}.*--ckpt-weights-only"):
            check_optimizer_groups({"optimizer_states": [{"param_groups": changed}]}, now, "--ckpt x.ckpt")
    with pytest.raises(CheckpointError, match="no optimizer state.*--ckpt-weights-only"):
        check_optimizer_groups({}, now, "--ckpt x.ckpt")
    with pytest.raises(CheckpointError, match=rf"format {CHECKPOINT_FORMAT + 1}.*upgrade"):
        check_format({VERSION_KEY: "9.0", FORMAT_KEY: CHECKPOINT_FORMAT + 1}, "--ckpt x.ckpt")
