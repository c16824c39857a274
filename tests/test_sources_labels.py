"""One label-PNG rule (`sam2train.data.labels`): the DAVIS reader, `evaluate` and `predict --prompt-mask` read a
0/255 grayscale mask, a palette mask with void and a 1-bit mask the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layouts import save_palette
from sam2train.data.labels import read_labels
from sam2train.data.sources import open_source
from sam2train.eval.evaluate import evaluate_folders
from sam2train.eval.prompts import read_mask_prompt

H, W = 24, 32
FRAMES = 3


def _labels() -> np.ndarray:
    """[H, W] uint8: object 1 on the left, object 2 on the right, a void (255) band between them."""
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[4:20, 2:12] = 1
    lab[4:20, 18:30] = 2
    lab[4:20, 14:16] = 255
    return lab


def _write(kind: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = _labels() == 1
    if kind == "gray_0_255":
        Image.fromarray(obj.astype(np.uint8) * 255, mode="L").save(path)
    elif kind == "one_bit":
        Image.fromarray(obj).convert("1").save(path)
    else:
        save_palette(path, _labels())


# what every caller must read: object ids, their masks, and void
EXPECTED = {
    "gray_0_255": ([1], {1: _labels() == 1}, np.zeros((H, W), bool)),
    "one_bit": ([1], {1: _labels() == 1}, np.zeros((H, W), bool)),
    "palette_with_void": ([1, 2], {1: _labels() == 1, 2: _labels() == 2}, _labels() == 255),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_reader_evaluate_and_predict_agree(tmp_path: Path, kind: str):
    ids, masks, void = EXPECTED[kind]
    root = tmp_path / "davis"
    for t in range(FRAMES):
        frame = root / "JPEGImages" / "v" / f"{t:05d}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(frame)
        _write(kind, root / "Annotations" / "v" / f"{t:05d}.png")
    png = root / "Annotations" / "v" / "00000.png"

    # the DAVIS reader
    source = open_source(root)
    (video,) = source.videos
    fm = source.load_masks(video, 0)
    assert video.object_ids == ids and fm.ids.tolist() == ids
    assert all((fm.get(i) == masks[i]).all() for i in ids) and (fm.void == void).all()

    # predict --prompt-mask
    got_ids, got_masks = read_mask_prompt(png, (H, W))
    assert got_ids == ids and all((m == masks[i]).all() for i, m in zip(ids, got_masks))

    # evaluate: the ground truth read as the reader reads it scores a perfect prediction 1.0
    labels = read_labels(png)
    assert sorted(set(np.unique(labels).tolist()) - {0, 255}) == ids and ((labels == 255) == void).all()
    for t in range(FRAMES):
        pred = np.zeros((H, W), np.uint8)
        for i in ids:
            pred[masks[i]] = i
        save_palette(tmp_path / "pred" / "v" / f"{t:05d}.png", pred)
    assert evaluate_folders(tmp_path / "pred", root)["J&F"] == 1.0


def test_palette_0_255_is_void_and_grayscale_0_255_is_object_1(tmp_path: Path):
    """The one place the rule looks at the mode: 255 in a palette PNG is void (DAVIS-2017), in a grayscale
    PNG holding only 0 and 255 it is the object (DAVIS-2016)."""
    lab = np.zeros((H, W), np.uint8)
    lab[2:6, 2:6] = 255
    save_palette(tmp_path / "p.png", lab)
    Image.fromarray(lab, mode="L").save(tmp_path / "l.png")
    assert set(np.unique(read_labels(tmp_path / "p.png")).tolist()) == {0, 255}
    assert set(np.unique(read_labels(tmp_path / "l.png")).tolist()) == {0, 1}
    # within a video the reader decides once for all masks: one mask with another id makes 255 void
    assert read_labels(tmp_path / "l.png", binary=False).max() == 255
