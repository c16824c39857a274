"""`sam2train predict` and `sam2train export` end to end: parity of our streamed pass with Meta's
SAM2VideoPredictor built from the exported file, video files vs frame folders, every prompt kind, and errors that
name the culprit (exit status 2)."""

from __future__ import annotations

import io
import re
import shutil
import sys
import warnings
from contextlib import redirect_stdout
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2train.cli import main
from sam2train.config import load_config, to_dict
from sam2train.viz import save_palette_png

SIZE, FRAMES, SEQUENCE = 256, 4, "blackswan"


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory, sam2_factory) -> Path:
    """A Lightning-style checkpoint of a random hiera-t at 256 px whose objects are always present."""
    model = sam2_factory("sam2.1_hiera_t", image_size=SIZE)
    with torch.no_grad():  # random object scores sit near 0: every tracked mask would be -1024
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    config = to_dict(load_config(None, [f"model.image_size={SIZE}"]))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "sam2train_config": config},
               path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def exported(lightning_ckpt, tmp_path_factory) -> dict:
    """`sam2train export` of the Lightning checkpoint: the .pt path and what the command printed."""
    out = tmp_path_factory.mktemp("export") / "tuned.pt"
    with redirect_stdout(io.StringIO()) as printed:
        assert main(["export", "--ckpt", str(lightning_ckpt), "--out", str(out)]) == 0
    return {"pt": out, "stdout": printed.getvalue()}


@pytest.fixture(scope="module")
def meta_predictor(exported, davis):
    """Meta's SAM2VideoPredictor built from the exported file as its README says (post-processing on)."""
    from sam2.build_sam import build_sam2_video_predictor

    return build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        str(exported["pt"]),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={SIZE}"],
    )


@pytest.fixture(scope="module")
def davis(shared_data, tmp_path_factory) -> dict:
    """The first frames of blackswan copied to a folder, and its first-frame mask (one object, 0/255)."""
    root = shared_data / "davis2016"
    src = root / "JPEGImages" / "480p" / SEQUENCE
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    frames = tmp_path_factory.mktemp("davis") / SEQUENCE
    frames.mkdir()
    for path in sorted(src.glob("*.jpg"))[:FRAMES]:
        shutil.copy(path, frames / path.name)
    mask_png = root / "Annotations" / "480p" / SEQUENCE / "00000.png"
    return {"frames": frames, "mask_png": mask_png, "mask": np.array(Image.open(mask_png)) > 0}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    """Three 128x96 frames of a bright square moving over a gradient, and its first-frame mask (0/255 PNG)."""
    root = tmp_path_factory.mktemp("synthetic")
    frames = root / "square"
    frames.mkdir()
    yy, xx = np.mgrid[:96, :128]
    for t in range(3):
        img = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.uint8)
        img[30:60, 40 + 4 * t : 70 + 4 * t] = (250, 240, 20)
        Image.fromarray(img).save(frames / f"{t:05d}.png")
    mask = np.zeros((96, 128), dtype=np.uint8)
    mask[30:60, 40:70] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return {"frames": frames, "mask_png": root / "mask.png", "root": root}


def _predict(ckpt: Path, frames: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """Run `sam2train predict` and read back the PNGs it wrote: frame name -> [H, W] object ids."""
    assert (
        main(["predict", "--checkpoint", str(ckpt), "--frames", str(frames), "--out", str(out), *extra]) == 0
    )
    name = frames.stem if frames.is_file() else frames.name
    pngs = sorted((out / name).glob("*.png"))
    assert all(Image.open(p).mode == "P" for p in pngs)
    return {p.stem: np.array(Image.open(p)) for p in pngs}


def _meta_masks(predictor, frames: Path, prompts: dict[int, dict]) -> list[dict[int, np.ndarray]]:
    """Meta's predictor as its README runs it: per frame, object id -> bool mask at the video's size."""
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # hole filling needs the compiled sam2._C extension
        state = predictor.init_state(video_path=str(frames))
        for obj_id, prompt in prompts.items():
            if "mask" in prompt:
                predictor.add_new_mask(state, 0, obj_id, prompt["mask"])
            else:
                predictor.add_new_points_or_box(state, 0, obj_id, **prompt)
        return [
            {i: (logits[k, 0] > 0).numpy() for k, i in enumerate(ids)}
            for _, ids, logits in predictor.propagate_in_video(state)
        ]


def _assert_same(ours: dict[str, np.ndarray], theirs: list[dict[int, np.ndarray]]) -> None:
    assert len(ours) == len(theirs) == FRAMES
    for t, (labels, reference) in enumerate(zip(ours.values(), theirs)):
        for obj_id, ref in reference.items():
            pred = labels == obj_id
            iou = (pred & ref).sum() / (pred | ref).sum()
            assert iou >= 0.99, f"frame {t}, object {obj_id}: IoU {iou:.4f}"
            assert 0.01 < ref.mean() < 0.99, "trivial masks make parity meaningless"


@pytest.mark.slow
def test_predict_and_export_match_meta_predictor(lightning_ckpt, exported, meta_predictor, davis, tmp_path):
    ours = _predict(lightning_ckpt, davis["frames"], tmp_path, "--prompt-mask", str(davis["mask_png"]))
    assert list(ours) == [f"{t:05d}" for t in range(FRAMES)] and ours["00000"].shape == davis["mask"].shape
    _assert_same(ours, _meta_masks(meta_predictor, davis["frames"], {1: {"mask": davis["mask"]}}))
    call = f'build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", "{exported["pt"]}", '
    assert call + f'hydra_overrides_extra=["++model.image_size={SIZE}"])' in exported["stdout"]
    assert exported["pt"].with_suffix(".yaml").is_file()


@pytest.mark.slow
def test_click_prompt_matches_meta_predictor(exported, meta_predictor, davis, tmp_path):
    """Clicks in original pixels on the exported .pt (its model YAML found beside it), scaled as the predictor
    scales them (x * S / W, y * S / H)."""
    ys, xs = np.nonzero(davis["mask"])
    inside, outside = (int(xs[len(xs) // 2]), int(ys[len(ys) // 2])), (20, 300)
    flag = f"{inside[0]},{inside[1]},1;{outside[0]},{outside[1]},0"
    prompt = {"points": np.array([inside, outside], dtype=np.float32), "labels": np.array([1, 0])}
    ours = _predict(exported["pt"], davis["frames"], tmp_path, "--points", flag)
    _assert_same(ours, _meta_masks(meta_predictor, davis["frames"], {1: prompt}))


@pytest.mark.slow
def test_palette_prompt_tracks_objects_without_overlap(exported, meta_predictor, davis, tmp_path):
    """Two objects (palette ids 1 and 3) resolved at output as the predictor's non_overlap_masks resolves them."""
    mask = davis["mask"]
    split = int(np.median(np.nonzero(mask)[1]))
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[:, :split][mask[:, :split]] = 1
    labels[:, split:][mask[:, split:]] = 3
    save_palette_png(tmp_path / "two.png", labels)
    ours = _predict(
        exported["pt"], davis["frames"], tmp_path / "out", "--prompt-mask", str(tmp_path / "two.png")
    )
    prompts = {1: {"mask": labels == 1}, 3: {"mask": labels == 3}}
    meta_predictor.non_overlap_masks = True  # what ++model.non_overlap_masks=true sets
    try:
        theirs = _meta_masks(meta_predictor, davis["frames"], prompts)
    finally:
        meta_predictor.non_overlap_masks = False
    _assert_same(ours, theirs)
    assert set(np.unique(ours["00003"])) == {0, 1, 3}


def _write_mp4(frames: Path, path: Path) -> Path:
    """Encode a folder of frames as H.264 (lossless is not needed: the frames are compared after decoding)."""
    av = pytest.importorskip("av")
    images = [np.array(Image.open(p).convert("RGB")) for p in sorted(frames.glob("*.png"))]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=Fraction(10)
        )
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        for img in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_video_file_gives_the_same_masks_as_its_frames(lightning_ckpt, synthetic, tmp_path):
    """A video file is decoded with PyAV and prepared like frames from a folder; box prompt, MP4 overlay."""
    av = pytest.importorskip("av")
    video = _write_mp4(synthetic["frames"], tmp_path / "square.mp4")
    decoded = tmp_path / "decoded"
    decoded.mkdir()
    with av.open(str(video)) as container:
        for t, frame in enumerate(container.decode(video=0)):
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(decoded / f"{t:05d}.png")
    args = ("--box", "40,30,70,60", "--image-size", "128")
    from_video = _predict(lightning_ckpt, video, tmp_path / "a", *args, "--overlay", str(tmp_path / "o.mp4"))
    from_folder = _predict(lightning_ckpt, decoded, tmp_path / "b", *args)
    assert list(from_video) == list(from_folder) == ["00000", "00001", "00002"]
    for name in from_video:
        assert np.array_equal(from_video[name], from_folder[name]), name
        assert from_video[name].shape == (96, 128) and set(np.unique(from_video[name])) <= {0, 1}
    assert from_video["00000"].any() and (tmp_path / "o.mp4").stat().st_size > 0


def test_points_prompt_writes_masks_and_gif(lightning_ckpt, synthetic, tmp_path):
    args = ("--points", "55,45,1;5,5,0", "--image-size", "128", "--overlay", str(tmp_path / "o.gif"))
    masks = _predict(lightning_ckpt, synthetic["frames"], tmp_path, *args, "--device", "cpu")
    assert len(masks) == 3 and all(
        m.shape == (96, 128) and set(np.unique(m)) <= {0, 1} for m in masks.values()
    )
    assert masks["00000"].any() and Image.open(tmp_path / "o.gif").n_frames == 3


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_predict_errors_name_the_culprit(lightning_ckpt, synthetic, tmp_path, capsys):
    root, frames, mask = synthetic["root"], str(synthetic["frames"]), str(synthetic["mask_png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(np.full((50, 60), 255, np.uint8)).save(tmp_path / "small.png")
    torch.save({"model": {"no_mem_embed": torch.zeros(1)}}, tmp_path / "weights.pt")
    base = ["predict", "--checkpoint", str(lightning_ckpt), "--out", str(tmp_path / "out")]
    cases = {
        "--frames": [*base, "--frames", str(root / "missing"), "--prompt-mask", mask],
        str(tmp_path / "empty"): [*base, "--frames", str(tmp_path / "empty"), "--prompt-mask", mask],
        "junk.mp4": [*base, "--frames", str(tmp_path / "junk.mp4"), "--prompt-mask", mask],
        "small.png": [*base, "--frames", frames, "--prompt-mask", str(tmp_path / "small.png")],
        "blank.png": [*base, "--frames", frames, "--prompt-mask", str(tmp_path / "blank.png")],
        "--points": [*base, "--frames", frames, "--points", "500,20,1"],
        "--box": [*base, "--frames", frames, "--box", "10,10,5,40"],
        "--prompt-mask, --points, --box (got none)": [*base, "--frames", frames],
        "--points and --box": [*base, "--frames", frames, "--points", "5,5,1", "--box", "1,1,9,9"],
        "nothing.ckpt": ["predict", "--checkpoint", str(tmp_path / "nothing.ckpt"), "--frames", frames,
                         "--prompt-mask", mask, "--out", str(tmp_path)],
        "--model-config": ["predict", "--checkpoint", str(tmp_path / "weights.pt"), "--frames", frames,
                           "--prompt-mask", mask, "--out", str(tmp_path)],
        "--model-config nope": [*base, "--frames", frames, "--box", "1,1,9,9", "--model-config", "nope"],
        "--overlay": [*base, "--frames", frames, "--prompt-mask", mask, "--overlay", str(tmp_path / "o.avi")],
    }  # fmt: skip
    for culprit, argv in cases.items():
        assert culprit in _error(argv, capsys), culprit
    assert not (tmp_path / "out").exists()


def test_video_without_pyav_says_what_to_install(lightning_ckpt, synthetic, tmp_path, capsys, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    argv = ["predict", "--checkpoint", str(lightning_ckpt), "--frames", str(video), "--box", "1,1,5,5"]
    assert "pip install 'sam2train[video]'" in _error([*argv, "--out", str(tmp_path)], capsys)


def test_export_errors_name_the_file(lightning_ckpt, tmp_path, capsys):
    official = tmp_path / "official.pt"
    torch.save({"model": {"no_mem_embed": torch.zeros(1)}}, official)
    (tmp_path / "junk.ckpt").write_text("junk")
    for ckpt in (tmp_path / "missing.ckpt", official, tmp_path / "junk.ckpt"):
        assert str(ckpt) in _error(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x.pt")], capsys)
    assert "--out" in _error(
        ["export", "--ckpt", str(lightning_ckpt), "--out", str(tmp_path / "x.ckpt")], capsys
    )
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------- config from the weights, several objects (#15)


def test_official_config_is_read_from_the_weights(hiera_t_sam2, tiny_sam2, tmp_path, monkeypatch):
    """The weights' shapes name one official config (none for the tiny model's); several is an error naming
    them and --model-config."""
    from sam2train.errors import UserError
    from sam2train.eval.predict import model_config_from_weights
    from sam2train.model.build import official_configs_matching

    assert official_configs_matching(hiera_t_sam2.state_dict()) == ["sam2.1_hiera_t"]
    assert official_configs_matching(tiny_sam2.state_dict()) == []
    with pytest.raises(UserError, match="--model-config is required .* fits no official config"):
        model_config_from_weights(tiny_sam2.state_dict(), tmp_path / "w.pt")
    import sam2train.model.build as build

    monkeypatch.setattr(build, "official_configs_matching", lambda sd: ["sam2.1_hiera_t", "sam2_hiera_t"])
    with pytest.raises(
        UserError, match="--model-config .* several official configs .*sam2.1_hiera_t, sam2_hiera_t"
    ):
        model_config_from_weights(hiera_t_sam2.state_dict(), tmp_path / "w.pt")


def test_bare_pt_predicts_without_model_config(lightning_ckpt, synthetic, tmp_path, capsys):
    """A {'model': sd} of hiera-t with no YAML beside it: predict builds sam2.1_hiera_t and says frames/s."""
    sd = torch.load(lightning_ckpt, weights_only=True)["state_dict"]
    weights = tmp_path / "bare" / "weights.pt"
    weights.parent.mkdir()
    torch.save({"model": {k.removeprefix("model."): v for k, v in sd.items()}}, weights)
    masks = _predict(
        weights, synthetic["frames"], tmp_path / "a", "--box", "40,30,70,60", "--image-size", "128"
    )
    assert len(masks) == 3 and masks["00000"].any()
    assert "frames/s" in capsys.readouterr().out


def test_points_and_boxes_prompt_one_object_each():
    """`--points ID:...` and `--box ID:...` repeat; ids default to the value's place; clicks are padded with -1
    and scaled as the predictor scales them (x * S / W, y * S / H)."""
    from argparse import Namespace

    from sam2train.batch import PROMPT_BOX, PROMPT_POINT
    from sam2train.errors import UserError
    from sam2train.eval.prompts import model_prompts

    def prompts(points=None, box=None, objects=None):
        args = Namespace(prompt_mask=None, points=points, box=box, objects=objects)
        return model_prompts(args, (96, 128), 256)

    ids, p = prompts(points=["3:10,10;5,5,0", "1:64,48"], box=["2:40,30,70,60"])
    assert ids == [1, 2, 3] and p.kind.tolist() == [PROMPT_POINT, PROMPT_BOX, PROMPT_POINT]
    assert p.point_labels.tolist() == [[1, -1], [-1, -1], [1, 0]]
    assert p.point_coords[0, 0].tolist() == [128.0, 128.0] and p.point_coords[2, 1].tolist() == pytest.approx(
        [10.0, 40 / 3]
    )
    assert p.boxes[1].tolist() == pytest.approx([80.0, 80.0, 140.0, 160.0]) and p.masks.shape == (3, 256, 256)
    assert prompts(points=["5,5", "9,9,1"])[0] == [1, 2] and prompts(box=["1,1,9,9"])[0] == [1]
    bad = {
        "object 1 is prompted twice (--points and --box)": {"points": ["1:5,5"], "box": ["1,1,9,9"]},
        "object id before ':'": {"points": ["0:5,5"]},
        "--objects picks objects of --prompt-mask": {"points": ["5,5"], "objects": "1"},
        "label must be 1": {"points": ["5,5,2"]},
    }
    for message, kwargs in bad.items():
        with pytest.raises(UserError, match=re.escape(message)):
            prompts(**kwargs)


def test_several_objects_and_objects_from_a_mask_end_to_end(tiny_ckpt, synthetic, tmp_path, capsys, caplog):
    """Two objects by a click and a box; `--objects` picks ids from a many-object mask, and an object whose mask
    has no pixel at the model's size is named in a warning before tracking."""
    frames = synthetic["frames"]
    two = _predict(tiny_ckpt, frames, tmp_path / "a", "--points", "1:55,45", "--box", "2:0,0,30,20",
                   "--image-size", "128")  # fmt: skip
    assert len(two) == 3 and all(set(np.unique(m)) <= {0, 1, 2} for m in two.values())
    labels = np.zeros((96, 128), np.uint8)
    labels[30:60, 40:70], labels[0:20, 0:30], labels[80, 100] = 1, 4, 7  # object 7: one pixel
    save_palette_png(tmp_path / "many.png", labels)
    picked = _predict(tiny_ckpt, frames, tmp_path / "b", "--prompt-mask", str(tmp_path / "many.png"),
                      "--objects", "4,7", "--image-size", "64")  # fmt: skip
    assert all(set(np.unique(m)) <= {0, 4, 7} for m in picked.values()) and 4 in picked["00000"]
    said = capsys.readouterr().err + caplog.text
    assert "object(s) [7]" in said and "no pixel" in said and "[4]" not in said
    argv = [
        "predict",
        "--checkpoint",
        str(tiny_ckpt),
        "--frames",
        str(frames),
        "--out",
        str(tmp_path / "c"),
    ]
    err = _error([*argv, "--prompt-mask", str(tmp_path / "many.png"), "--objects", "4,5"], capsys)
    assert "--objects" in err and "[5]" in err and "[1, 4, 7]" in err
