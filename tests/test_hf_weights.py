"""transformers SAM 2 checkpoints in (`model.checkpoint`, `predict --checkpoint` of a folder) and out
(`export --format hf`): the key mapping round trip, strict errors naming the key, and a real transformers client
(its processor, inference session and propagation) against our `predict` on DAVIS frames. Offline: transformers
models are built from configs with random weights."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import HIERA_T, build_random_sam2, fit_args, needs_shared_data
from sam2train.cli import main
from sam2train.config import ModelConfig, load_config, to_dict
from sam2train.errors import CheckpointError, MissingDependencyError
from sam2train.model import build_model
from sam2train.model.checkpoints import read_checkpoint
from sam2train.model.hf_config import (
    OFFICIAL_NAMES,
    build_hf_config,
    check_model_config,
    hf_config,
    hf_expected,
    infer_official,
)
from sam2train.model.hf_weights import (
    check_against,
    hf_folder,
    hf_to_meta,
    meta_to_hf,
    save_hf_folder,
)

transformers = pytest.importorskip("transformers")  # the [hf] extra; part of the dev extra

SIZE = 128


def _round_trip(model: torch.nn.Module, name: str) -> None:
    sd = model.state_dict()
    hf = meta_to_hf(sd)
    check_against(
        hf, hf_expected(name, SIZE), "exported", "transformers' model"
    )  # strict, as from_pretrained
    back = hf_to_meta(hf)
    assert set(back) == set(sd)
    assert all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd)


def test_round_trip_hiera_t_sam21_is_bit_identical(hiera_t_sam2) -> None:
    _round_trip(hiera_t_sam2, HIERA_T)


@pytest.mark.parametrize(
    "name",
    [pytest.param("sam2.1_hiera_b+", marks=pytest.mark.slow), pytest.param("sam2_hiera_b+", marks=pytest.mark.slow)],
)  # fmt: skip
def test_round_trip_is_bit_identical(name: str) -> None:
    _round_trip(build_random_sam2(name, SIZE), name)


def test_image_model_config_reads_back_sam2(tmp_path: Path) -> None:
    """A folder whose config.json is transformers' image model's (`sam2`: no video options, as on the hub) is
    read back as SAM 2 or 2.1 from its tensors, bit-identical."""
    sd = build_random_sam2("sam2_hiera_t", SIZE).state_dict()
    save_hf_folder(sd, "sam2_hiera_t", SIZE, tmp_path)
    video = build_hf_config("sam2_hiera_t", SIZE)
    transformers.Sam2Config(vision_config=video.vision_config, prompt_encoder_config={"image_size": SIZE}).save_pretrained(tmp_path)  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sam2"
    contents = read_checkpoint(tmp_path)
    assert contents.config_tree == {"model": {"config": "sam2_hiera_t", "image_size": SIZE}}
    assert set(contents.state_dict) == set(sd) and all(
        torch.equal(contents.state_dict[k], v) for k, v in sd.items()
    )


def test_config_table_matches_meta_yamls_and_reads_back() -> None:
    """hf_config's Hiera and SAM 2 / 2.1 options are Meta's YAMLs; config.json -> (name, size) inverts it."""
    import inspect

    from omegaconf import OmegaConf
    from sam2.modeling.backbones.hieradet import Hiera

    from sam2train.model.build import resolve_model_config

    defaults = {k: v.default for k, v in inspect.signature(Hiera.__init__).parameters.items()}
    for name in OFFICIAL_NAMES:
        model = OmegaConf.load(resolve_model_config(name)).model
        trunk = {**defaults, **model.image_encoder.trunk}
        hf = hf_config(name, 512)
        hiera = hf["vision_config"]["backbone_config"]
        assert (
            hiera["hidden_size"] == trunk["embed_dim"] and hiera["num_attention_heads"] == trunk["num_heads"]
        )
        assert hiera["blocks_per_stage"] == list(trunk["stages"])
        assert hiera["global_attention_blocks"] == list(trunk["global_att_blocks"])
        assert hiera["window_size_per_stage"] == list(trunk["window_spec"])
        assert hiera["window_positional_embedding_background_size"] == list(
            trunk["window_pos_embed_bkg_spatial_size"]
        )
        assert hf["vision_config"]["backbone_channel_list"] == list(
            model.image_encoder.neck.backbone_channel_list
        )
        assert hf["enable_occlusion_spatial_embedding"] == bool(model.get("no_obj_embed_spatial", False))
        assert hf["enable_temporal_pos_encoding_for_object_pointers"] == bool(model.get("proj_tpos_enc_in_obj_ptrs", False))  # fmt: skip
        assert infer_official(build_hf_config(name, 512).to_dict(), "config.json") == (name, 512)
    tree = build_hf_config(HIERA_T, 512).to_dict()
    tree["vision_config"]["backbone_config"]["blocks_per_stage"] = [1, 2, 5, 2]
    with pytest.raises(CheckpointError, match=r"config.json: .*blocks_per_stage is \[1, 2, 5, 2\]"):
        infer_official(tree, "config.json")


@pytest.fixture(scope="module")
def hf_dir(hiera_t_sam2, tmp_path_factory) -> Path:
    """The random hiera-t SAM 2.1 at 128 px written as a transformers folder."""
    out = tmp_path_factory.mktemp("hf") / "sam2.1-tiny-128"
    save_hf_folder(hiera_t_sam2.state_dict(), HIERA_T, SIZE, out)
    return out


def test_exported_folder_loads_in_transformers_without_missing_or_unexpected_keys(hf_dir: Path) -> None:
    for cls in (transformers.Sam2VideoModel, transformers.Sam2Model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = cls.from_pretrained(hf_dir, output_loading_info=True)
        assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), (cls, info)
        assert model.config.image_size == SIZE
    processor = transformers.Sam2VideoProcessor.from_pretrained(hf_dir)
    assert processor.target_size == SIZE and processor.video_processor.size.height == SIZE
    assert sorted(p.suffix for p in hf_dir.iterdir()) == [".json", ".json", ".safetensors"]  # no pickle


def test_model_checkpoint_reads_a_transformers_folder(
    hf_dir: Path, hiera_t_sam2, caplog, monkeypatch
) -> None:
    assert hf_folder(hf_dir / "model.safetensors") == hf_folder(hf_dir) == hf_dir  # the folder or its weights
    contents = read_checkpoint(hf_dir)
    assert contents.kind == "transformers" and contents.config().model.config == HIERA_T
    assert contents.config().model.image_size == SIZE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(ModelConfig(config=HIERA_T, image_size=SIZE, checkpoint=str(hf_dir)))
        want = hiera_t_sam2.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
        with pytest.raises(
            CheckpointError, match=r"describes sam2.1_hiera_t .*set model.config: sam2.1_hiera_t"
        ):
            build_model(ModelConfig(config="sam2_hiera_t", image_size=SIZE, checkpoint=str(hf_dir)))
    monkeypatch.setattr(logging.getLogger("sam2train"), "propagate", True)  # the CLI may have set it False
    with caplog.at_level(logging.WARNING, logger="sam2train"):  # another resolution: allowed, and said
        check_model_config(contents.config_tree["model"], HIERA_T, True, 256, "model.checkpoint")
    assert "says image_size 128; the model runs at model.image_size 256" in caplog.text
    pt = hf_dir.parent / "from_hf.pt"  # export turns the folder into Meta's file
    with redirect_stdout(io.StringIO()):
        assert main(["export", "--ckpt", str(hf_dir), "--out", str(pt)]) == 0
    exported = torch.load(pt, map_location="cpu", weights_only=True)["model"]
    assert set(exported) == set(want) and all(torch.equal(exported[k], v) for k, v in want.items())


def _copy_with(hf_dir: Path, out: Path, change) -> Path:
    """A copy of `hf_dir` whose weights are `change(state_dict)` (config.json and processor unchanged)."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    for p in hf_dir.glob("*.json"):
        shutil.copy(p, out / p.name)
    sd = load_file(hf_dir / "model.safetensors")
    save_file(change(sd), str(out / "model.safetensors"))
    return out


def test_wrong_size_or_missing_key_is_an_error_naming_the_key(hf_dir: Path, tmp_path: Path) -> None:
    # the config.json of a b+ with the weights of a t: the first tensor of another shape is named
    bplus = tmp_path / "bplus"
    build_hf_config("sam2.1_hiera_b+", SIZE).save_pretrained(bplus)
    os.link(hf_dir / "model.safetensors", bplus / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'vision_encoder\.backbone\.\S+' has shape \[\d+"):
        read_checkpoint(bplus)
    key = "memory_encoder.projection.weight"
    missing = _copy_with(hf_dir, tmp_path / "missing", lambda sd: {k: v for k, v in sd.items() if k != key})
    with pytest.raises(CheckpointError, match=rf"{missing}.*the key '{key}' is missing"):
        read_checkpoint(missing / "model.safetensors")


def test_unknown_key_unequal_copies_and_pickles_are_refused(
    hf_dir: Path, hiera_t_sam2, tmp_path: Path
) -> None:
    hf = meta_to_hf(hiera_t_sam2.state_dict())
    with pytest.raises(CheckpointError, match="'extra.weight' is not part of SAM 2"):
        hf_to_meta({**hf, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="'extra.weight' is not in transformers"):
        check_against(
            {**hf, "extra.weight": torch.zeros(1)}, hf_expected(HIERA_T, SIZE), "f", "transformers' model"
        )
    copy = dict(hf, **{"shared_image_embedding.positional_embedding": torch.zeros(2, 128)})
    with pytest.raises(
        CheckpointError, match="shared_embedding.positional_embedding' and 'shared_image_embedding"
    ):
        hf_to_meta(copy)
    with pytest.raises(CheckpointError, match="'sam_prompt_encoder.point_embeddings.2.weight' is missing"):
        meta_to_hf({k: v for k, v in hiera_t_sam2.state_dict().items() if "point_embeddings.2" not in k})
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(hf_dir / "config.json", legacy / "config.json")
    (legacy / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_checkpoint(legacy)


def test_without_transformers_the_error_names_the_extra(hf_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "sam2train\[hf\]"'):
        read_checkpoint(hf_dir)


def test_export_hf_refuses_a_model_transformers_cannot_build(tiny_sam2, tmp_path: Path, capsys) -> None:
    from conftest import TINY_CONFIG

    ckpt = tmp_path / "tiny.ckpt"
    tree = to_dict(load_config(None, [f"model.config={TINY_CONFIG}", f"model.image_size={SIZE}"]))
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_sam2.state_dict().items()}, "sam2train_config": tree}, ckpt)  # fmt: skip
    assert main(["export", "--ckpt", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "not an official SAM 2 config" in capsys.readouterr().err
    # a weights-file name for a folder format is refused before anything is read or written
    out = tmp_path / "model.pt"
    assert main(["export", "--ckpt", str(ckpt), "--format", "hf", "--out", str(out)]) == 2
    assert "writes a folder" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------ a real transformers client (slow)

FRAMES, SEQUENCE, CLIENT_SIZE = 10, "blackswan", 256


@pytest.fixture(scope="module")
def davis_clip(shared_data: Path, tmp_path_factory) -> dict:
    """The first FRAMES frames of DAVIS-2016 blackswan and its first-frame mask."""
    root = tmp_path_factory.mktemp("davis")
    frames = root / SEQUENCE
    frames.mkdir()
    jpegs = sorted((shared_data / "davis2016" / "JPEGImages" / "480p" / SEQUENCE).glob("*.jpg"))[:FRAMES]
    for p in jpegs:
        shutil.copy(p, frames / p.name)
    mask_png = shared_data / "davis2016" / "Annotations" / "480p" / SEQUENCE / "00000.png"
    return {"frames": frames, "mask_png": mask_png, "mask": np.array(Image.open(mask_png)) > 0}


@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory) -> Path:
    """A randomly initialised transformers Sam2VideoModel (hiera-t SAM 2.1) saved as its users save it."""
    from sam2train.model.hf_config import save_hf_processor

    torch.manual_seed(0)
    model = transformers.Sam2VideoModel(build_hf_config(HIERA_T, CLIENT_SIZE)).eval()
    with torch.no_grad():
        # Meta's SAM 2 has one Fourier matrix where transformers keeps two (equal in every converted checkpoint;
        # a random init draws them apart), and random object scores sit near 0 (every mask would be empty)
        model.shared_image_embedding.positional_embedding.copy_(model.prompt_encoder.shared_embedding.positional_embedding)  # fmt: skip
        model.mask_decoder.pred_obj_score_head.proj_out.bias += 5.0
    out = tmp_path_factory.mktemp("client") / "sam2.1-random"
    model.save_pretrained(out)
    save_hf_processor(out, CLIENT_SIZE)  # bicubic as Meta's predictor; see save_hf_processor
    return out


def _transformers_masks(folder: Path, clip: dict) -> list[np.ndarray]:
    """transformers' own video inference: processor, inference session, mask prompt on frame 0, propagation."""
    processor = transformers.Sam2VideoProcessor.from_pretrained(folder)
    model = transformers.Sam2VideoModel.from_pretrained(folder).eval()
    video = [np.array(Image.open(p).convert("RGB")) for p in sorted(clip["frames"].glob("*.jpg"))]
    session = processor.init_video_session(video=video, inference_device="cpu", dtype=torch.float32)
    processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=1, input_masks=clip["mask"])
    size = [[session.video_height, session.video_width]]
    masks = []
    with torch.inference_mode():
        for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
            logits = processor.post_process_masks([out.pred_masks], original_sizes=size, binarize=False)[0]
            masks.append((logits[0, 0] > 0).numpy())
    return masks


def _predict_masks(checkpoint: Path, clip: dict, out: Path) -> list[np.ndarray]:
    args = ["predict", "--checkpoint", str(checkpoint), "--frames", str(clip["frames"]), "--out", str(out)]
    assert main([*args, "--prompt-mask", str(clip["mask_png"]), "--device", "cpu"]) == 0
    return [np.array(Image.open(p)) == 1 for p in sorted((out / SEQUENCE).glob("*.png"))]


def _assert_same(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(ours) == len(theirs) == FRAMES
    for t, (pred, ref) in enumerate(zip(ours, theirs)):
        iou = (pred & ref).sum() / (pred | ref).sum()
        assert iou >= 0.99, f"frame {t}: IoU {iou:.4f}"
        assert 0.01 < ref.mean() < 0.99, "trivial masks make parity meaningless"


@pytest.mark.slow
@needs_shared_data
def test_transformers_model_tracks_as_our_predict(
    transformers_folder: Path, davis_clip: dict, tmp_path
) -> None:
    ours = _predict_masks(transformers_folder, davis_clip, tmp_path / "ours")
    _assert_same(ours, _transformers_masks(transformers_folder, davis_clip))


@pytest.mark.slow
@needs_shared_data
def test_finetune_of_a_transformers_checkpoint_exports_back(
    transformers_folder: Path, davis_clip: dict, demo_data: Path, tmp_path: Path
) -> None:
    """fit from the transformers folder (1 step) -> export --format hf -> transformers' inference = our predict."""
    extra = [f"model.checkpoint={transformers_folder}", "logging.version=hf"]
    assert (
        main(fit_args(tmp_path, *extra, data=demo_data, model=HIERA_T, image_size=CLIENT_SIZE, steps=1)) == 0
    )
    ckpt = tmp_path / "demo" / "hf" / "checkpoints" / "last.ckpt"
    tuned = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    start = read_checkpoint(transformers_folder).state_dict
    assert any(
        not torch.equal(v, start[k[len("model.") :]]) for k, v in tuned.items() if k.startswith("model.")
    )
    out = tmp_path / "exported"
    with redirect_stdout(io.StringIO()) as printed:
        assert main(["export", "--ckpt", str(ckpt), "--format", "hf", "--out", str(out)]) == 0
    assert f'Sam2VideoModel.from_pretrained("{out}")' in printed.getvalue()
    assert json.loads((out / "config.json").read_text())["model_type"] == "sam2_video"
    ours = _predict_masks(ckpt, davis_clip, tmp_path / "ours")
    _assert_same(ours, _transformers_masks(out, davis_clip))
