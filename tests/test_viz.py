"""Pictures: palette PNGs, overlays, prompts, grids, GIF / MP4 and training curves."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2train import viz


def _frame(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_palette_is_davis() -> None:
    assert viz.PALETTE.shape == (256, 3) and viz.PALETTE.dtype == np.uint8
    assert viz.PALETTE[0].tolist() == [0, 0, 0]
    assert viz.PALETTE[1].tolist() == [128, 0, 0]
    assert viz.PALETTE[2].tolist() == [0, 128, 0]
    assert viz.PALETTE[255].tolist() == [224, 224, 192]


def test_palette_png_roundtrip(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 6, (33, 47)).astype(np.uint8)
    labels[0, 0] = 255
    path = viz.save_palette_png(tmp_path / "sub" / "m.png", labels)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), labels)
        assert img.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    with pytest.raises(ValueError, match="0..255"):
        viz.palette_image(np.full((2, 2), 300))


def test_overlay_colours_masked_pixels_only() -> None:
    frame = _frame()
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 25:35, 30:50] = True
    out = viz.overlay(frame, masks, [1, 7])
    assert out.shape == frame.shape and out.dtype == np.uint8
    outside = ~masks.any(axis=0)
    assert np.array_equal(out[outside], frame[outside])
    assert not np.array_equal(out[masks[0]], frame[masks[0]])
    assert out[5, 10].tolist() == list(viz.colour(1))  # the outline is opaque
    assert np.array_equal(viz.overlay(frame, np.zeros((0, 40, 60), bool), []), frame)
    with pytest.raises(ValueError, match="masks"):
        viz.overlay(frame, masks[:, :10], [1, 2])


def test_draw_prompts_marks_points_and_boxes() -> None:
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    points = np.array([[[10, 10], [50, 50], [30, 50]]], dtype=np.float32)
    labels = np.array([[1, 0, -1]])
    out = viz.draw_prompts(frame, points, labels, boxes=np.array([[20, 20, 40, 40]]), ids=[2])
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert out[10, 10].tolist() == [0, 255, 0]
    assert out[50, 50].tolist() == [255, 0, 0]
    assert out[50, 30].tolist() == [0, 0, 0]  # label -1 is padding
    assert out[20, 30].tolist() == list(viz.colour(2))
    assert not frame.any()  # the input is left alone
    nan_box = viz.draw_prompts(frame, points[:, :0], None, boxes=np.full((1, 4), np.nan))  # a non-box object
    assert not nan_box.any()


def test_strip_grid_with_labels() -> None:
    frame = _frame()
    mask = np.zeros((20, 30), dtype=bool)  # another size: resized to the first cell
    grid = viz.strip([[frame, frame, frame], [mask, frame]], labels=["frames", "gt"])
    assert grid.dtype == np.uint8 and grid.ndim == 3
    assert grid.shape[0] == 2 * 40 + 3 * 2
    assert grid.shape[1] > 3 * 60
    assert viz.strip([[frame]]).shape == (44, 64, 3)
    with pytest.raises(ValueError, match="labels"):
        viz.strip([[frame]], labels=["a", "b"])


def test_save_png_gif(tmp_path: Path) -> None:
    frames = [_frame(seed=i) for i in range(3)]  # Pillow merges identical consecutive GIF frames
    with Image.open(viz.save_png(tmp_path / "a" / "x.png", frames[0])) as img:
        assert img.size == (60, 40)
    with Image.open(viz.save_png(tmp_path / "m.png", np.eye(5, dtype=bool))) as img:
        assert img.mode == "L" and np.asarray(img)[0, 0] == 255
    with Image.open(viz.save_gif(tmp_path / "x.gif", frames, fps=5)) as gif:
        assert gif.n_frames == 3 and gif.size == (60, 40)
    with pytest.raises(ValueError, match="frame 1"):
        viz.save_gif(tmp_path / "y.gif", [frames[0], frames[0][:10]])


def test_save_mp4_odd_size(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    frames = [np.full((33, 45, 3), 20 * i, dtype=np.uint8) for i in range(5)]
    path = viz.save_mp4(tmp_path / "x.mp4", frames, fps=8)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5
    assert decoded[0].shape == (34, 46, 3)


def test_save_mp4_without_av(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"sam2train\[video\]"):
        viz.save_mp4(tmp_path / "x.mp4", [_frame()])


def _metrics_csv(path: Path) -> Path:
    rows = ["epoch,step,train/total,val/total,val/J&F"]
    for step in range(10):
        rows.append(f"{step // 5},{step},{1 / (step + 1)},,")
        if step % 5 == 4:
            rows.append(f"{step // 5},{step},,{0.8 - step / 20},{0.4 + step / 30}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_plot_curves_from_csv_with_gaps(tmp_path: Path) -> None:
    csv = _metrics_csv(tmp_path / "metrics.csv")
    data = viz.read_metrics_csv(csv)
    assert math.isnan(data["val/total"][0]) and data["val/J&F"][5] == pytest.approx(0.4 + 4 / 30)
    out = tmp_path / "plots" / "curves.png"
    drawn = viz.plot_curves(csv, out, keys=["train/total", "val/total", "val/J&F", "train/missing"])
    assert drawn == ["train/total", "val/total", "val/J&F"]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1]


def test_plot_curves_dict_and_missing_columns(tmp_path: Path) -> None:
    drawn = viz.plot_curves({"train/total": [1.0, math.nan, 0.5]}, tmp_path / "a.png")
    assert drawn == ["train/total"]
    assert viz.plot_curves({"epoch": [0, 1]}, tmp_path / "b.png") == []
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
