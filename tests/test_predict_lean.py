"""`sam2train predict` as lean as Meta's predictor: memory flat in the video's length (measured in a subprocess),
objects tracked a group at a time with the same masks, the label map's non-overlap rule computed a group at a
time, one stored copy of the memory's positional encoding, the memory bank offloaded, and a start-up that imports
nothing predict does not need."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2train.cli import main
from sam2train.viz import save_palette_png

OBJECTS = {1: (30, 60, 40, 70), 2: (0, 20, 0, 30), 3: (60, 90, 90, 120)}
"""Object id -> (y0, y1, x0, x1) of its first-frame box in the 96x128 synthetic frames."""

CHILD = """
import json, sys
from sam2train.memory import peak_rss_bytes
from sam2train.cli import main
code = main(sys.argv[1:])
heavy = [m for m in ("torchvision", "scipy", "lightning", "sympy", "pandas") if m in sys.modules]
print(json.dumps({"code": code, "peak_kib": peak_rss_bytes() // 1024, "heavy": heavy}))
"""


def _write_video(folder: Path, frames: int, size: tuple[int, int] = (96, 128)) -> Path:
    """`frames` JPEGs of three coloured rectangles drifting over a gradient."""
    folder.mkdir(parents=True)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for t in range(frames):
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], axis=-1).astype(np.uint8)
        for k, (y0, y1, x0, x1) in OBJECTS.items():
            dy, dx = (t * k) % 7, (t * 2) % 9
            img[y0 * h // 96 + dy : y1 * h // 96 + dy, x0 * w // 128 + dx : x1 * w // 128 + dx] = (
                80 * k,
                240,
                40,
            )
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def three_objects(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lean")
    labels = np.zeros((96, 128), np.uint8)
    for k, (y0, y1, x0, x1) in OBJECTS.items():
        labels[y0:y1, x0:x1] = k
    save_palette_png(root / "mask.png", labels)
    return {"frames": _write_video(root / "clip", 5), "mask": root / "mask.png"}


def _predict(ckpt: Path, frames: Path, mask: Path, out: Path, *extra: str) -> list[np.ndarray]:
    argv = ["predict", "--checkpoint", str(ckpt), "--frames", str(frames), "--prompt-mask", str(mask)]
    assert main([*argv, "--out", str(out), *extra]) == 0
    return [np.array(Image.open(p)) for p in sorted((out / frames.name).glob("*.png"))]


def test_object_chunks_and_offload_give_the_same_masks(tiny_ckpt, three_objects, tmp_path):
    """Three objects all at once, one per call, two then one, and with the memory bank offloaded: the same PNGs
    (up to float rounding between batch sizes where two objects' logits nearly tie: at most 1e-3 of the pixels),
    and every object is tracked."""
    frames, mask = three_objects["frames"], three_objects["mask"]
    together = _predict(tiny_ckpt, frames, mask, tmp_path / "all", "--object-chunk", "3")
    assert len(together) == 5 and set(np.unique(together[-1])) == {0, 1, 2, 3}
    runs = {"one": ["--object-chunk", "1"], "two": ["--object-chunk", "2"], "off": ["--offload"]}
    for name, extra in runs.items():
        masks = _predict(tiny_ckpt, frames, mask, tmp_path / name, *extra)
        assert len(masks) == 5 and all((a != b).mean() <= 1e-3 for a, b in zip(together, masks)), name
    bf16 = _predict(tiny_ckpt, frames, mask, tmp_path / "bf16", "--precision", "bf16")
    agree = np.mean([(a == b).mean() for a, b in zip(together, bf16)])
    assert len(bf16) == 5 and 0.8 < agree < 1.0  # bf16 autocast took effect, close to fp32 on a random model


def test_object_chunks_give_the_same_logits(tiny_sam2, three_objects):
    """The tracker's logits for every frame, all objects in one call vs one or two per call: equal to float
    rounding."""
    from sam2train.eval.predict import open_frames, track_frames
    from sam2train.eval.prompts import model_prompts

    source = open_frames(three_objects["frames"])
    flags = argparse.Namespace(prompt_mask=str(three_objects["mask"]), objects=None, points=None, box=None)
    _, prompts = model_prompts(flags, source.size, tiny_sam2.image_size)
    model = tiny_sam2.eval()
    try:
        with torch.inference_mode():
            runs = {
                k: [x for _, x in track_frames(model, source, prompts, object_chunk=k)] for k in (3, 2, 1)
            }
    finally:
        tiny_sam2.train()
    for k in (2, 1):
        for a, b in zip(runs[3], runs[k], strict=True):
            assert a.shape == (3, 32, 32) and torch.allclose(a, b, atol=1e-3, rtol=1e-4), (
                k,
                (a - b).abs().max(),
            )


def test_object_chunk_must_be_positive(tiny_ckpt, three_objects, tmp_path, capsys):
    argv = ["predict", "--checkpoint", str(tiny_ckpt), "--frames", str(three_objects["frames"])]
    with pytest.raises(SystemExit):
        main(
            [
                *argv,
                "--prompt-mask",
                str(three_objects["mask"]),
                "--out",
                str(tmp_path),
                "--object-chunk",
                "0",
            ]
        )
    assert "--object-chunk" in capsys.readouterr().err


def test_label_map_is_the_non_overlap_rule_a_group_at_a_time():
    """Any chunk size gives SAM 2's rule (`_apply_non_overlapping_constraints`, then > 0; ties to the first
    object), computed at the video's size."""
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.eval.predict import label_map

    g = torch.Generator().manual_seed(0)
    low = torch.randn(5, 16, 16, generator=g) * 3
    low[3] = low[1]  # a tie everywhere between objects 1 and 3
    ids = [3, 9, 4, 12, 200]
    size = (24, 40)
    logits = torch.nn.functional.interpolate(low[:, None], size=size, mode="bilinear", align_corners=False)
    kept = SAM2Base._apply_non_overlapping_constraints(None, logits)[:, 0] > 0
    expected = np.zeros(size, np.uint8)
    for k, obj in enumerate(ids):
        expected[kept[k].numpy()] = obj
    assert (expected == 12).sum() == 0 and (expected == 9).sum() > 0  # the tie went to the first of the two
    for chunk in (1, 2, 3, 5, 8):
        assert np.array_equal(label_map(low, ids, size, chunk), expected), chunk
    one = label_map(low[:1], ids[:1], size, 1)
    assert np.array_equal(one, np.where(logits[0, 0].numpy() > 0, 3, 0))


def test_default_object_chunk_follows_the_memory_budget():
    from sam2train.eval.predict import (
        OBJECT_MEMORY_BUDGET,
        PER_OBJECT_BYTES_PER_PIXEL,
        default_object_chunk,
    )

    for size in (256, 512, 1024, 2048):
        k = default_object_chunk(size, 1000)
        assert k >= 1 and (k == 1 or k * PER_OBJECT_BYTES_PER_PIXEL * size * size <= OBJECT_MEMORY_BUDGET)
        assert (k + 1) * PER_OBJECT_BYTES_PER_PIXEL * size * size > OBJECT_MEMORY_BUDGET or k == 1000
    assert default_object_chunk(256, 3) == 3  # never more than the objects there are
    assert default_object_chunk(512, 100) > default_object_chunk(1024, 100) == 1


def _tracked(model, three_objects, **kwargs) -> tuple[list[torch.Tensor], list]:
    """`track_frames` of the three-object clip: the logits of every frame and the trackers it used."""
    from sam2train.eval.predict import open_frames, track_frames
    from sam2train.eval.prompts import model_prompts
    from sam2train.model.tracker import VideoTracker

    trackers = []
    original = VideoTracker.__init__

    def spy(self, *args, **kw):
        original(self, *args, **kw)
        trackers.append(self)

    source = open_frames(three_objects["frames"])
    flags = argparse.Namespace(prompt_mask=str(three_objects["mask"]), objects=None, points=None, box=None)
    _, prompts = model_prompts(flags, source.size, model.image_size)
    try:
        VideoTracker.__init__ = spy
        with torch.inference_mode():
            logits = [x.float().cpu() for _, x in track_frames(model, source, prompts, **kwargs)]
    finally:
        VideoTracker.__init__ = original
    return logits, trackers


def _bank(tracker) -> list[dict]:
    memory = tracker.memory
    return [*memory["cond_frame_outputs"].values(), *memory["non_cond_frame_outputs"].values()]


def test_memory_bank_stores_one_positional_encoding(tiny_sam2, three_objects):
    """Every memory in the bank views one stored positional encoding (the predictor's constant), not a copy per
    frame."""
    model = copy.deepcopy(tiny_sam2).eval()
    logits, trackers = _tracked(model, three_objects)
    assert len(logits) == 5 and len(trackers) == 1
    encodings = [e["maskmem_pos_enc"] for e in _bank(trackers[0]) if e["maskmem_pos_enc"] is not None]
    assert len(encodings) >= 3
    assert len({x[-1].untyped_storage().data_ptr() for x in encodings}) == 1
    assert encodings[0][-1].shape[0] == len(OBJECTS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offload_keeps_the_memory_bank_in_host_memory(tiny_sam2, three_objects):
    """On a GPU, `--offload` stores every memory's features on the CPU (the predictor's offload_state_to_cpu)
    and tracks the same masks as keeping them on the device."""
    model = copy.deepcopy(tiny_sam2).eval().cuda()
    kept, on_device = _tracked(model, three_objects)
    offloaded, on_host = _tracked(model, three_objects, offload=True)
    features = lambda trackers: {e["maskmem_features"].device.type for t in trackers for e in _bank(t)}  # noqa: E731
    assert features(on_device) == {"cuda"} and features(on_host) == {"cpu"}
    for a, b in zip(kept, offloaded, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _child(ckpt: Path, frames: Path, mask: Path, out: Path, *extra: str) -> dict:
    argv = ["predict", "--checkpoint", str(ckpt), "--frames", str(frames), "--prompt-mask", str(mask)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_is_flat_in_video_length_and_start_up_imports_little(tiny_ckpt, tmp_path):
    """A 200-frame video peaks at no more than 1.1x a 20-frame one (whole processes); keeping every frame (the
    GIF overlay, which needs the whole sequence) does exceed it, so the measurement can see a leak. The process
    never imports the training stack (torchvision, scipy, Lightning)."""
    labels = np.zeros((480, 640), np.uint8)
    for k, (y0, y1, x0, x1) in OBJECTS.items():
        labels[y0 * 5 : y1 * 5, x0 * 5 : x1 * 5] = k
    save_palette_png(tmp_path / "mask.png", labels)
    mask = tmp_path / "mask.png"
    short = _child(tiny_ckpt, _write_video(tmp_path / "short", 20, (480, 640)), mask, tmp_path / "a")
    long_video = _write_video(tmp_path / "long", 200, (480, 640))
    long = _child(tiny_ckpt, long_video, mask, tmp_path / "b")
    assert short["code"] == long["code"] == 0 and short["heavy"] == [] and long["heavy"] == []
    assert long["peak_kib"] <= 1.1 * short["peak_kib"], (short, long)
    leaky = _child(tiny_ckpt, long_video, mask, tmp_path / "c", "--overlay", str(tmp_path / "all.gif"))
    assert leaky["peak_kib"] > 1.1 * short["peak_kib"], (short, leaky)
