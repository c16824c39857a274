"""J, F and J&F: hand cases, a literal numpy port of the DAVIS reference, and the OSVOS reference figures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA, needs_shared_data
from sam2train.errors import DataError
from sam2train.eval.evaluate import evaluate_folders
from sam2train.metrics import (
    boundary_f,
    disk_radius,
    frame_statistics,
    jaccard,
    seg2bmap,
    sequence_scores,
    summarize,
)

# ---------------------------------------------------------------- a literal port of davis2017-evaluation


def _ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _ref_dilate(b: np.ndarray, r: int) -> np.ndarray:
    """Dilation by skimage.morphology.disk(r) (x^2 + y^2 <= r^2), pixels outside the image ignored."""
    h, w = b.shape
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > r * r:
                continue
            src = b[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            out[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] |= src
    return out


def _ref_f(fg: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008) -> float:
    void = np.zeros_like(fg, dtype=bool) if void is None else void
    r = int(bound_th) if bound_th >= 1 else int(np.ceil(bound_th * np.linalg.norm(fg.shape)))
    fb, gb = _ref_seg2bmap(fg & ~void), _ref_seg2bmap(gt & ~void)
    fd, gd = _ref_dilate(fb, r), _ref_dilate(gb, r)
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fb & gd) / float(n_fg), np.sum(gb & fd) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _blobs(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(k):
        cy, cx, ry, rx = (
            rng.integers(0, h),
            rng.integers(0, w),
            rng.integers(1, h + 1),
            rng.integers(1, w + 1),
        )
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return m


# ---------------------------------------------------------------- per frame


def test_jaccard_hand_cases():
    empty = np.zeros((4, 5), bool)
    full = np.ones((4, 5), bool)
    half = np.zeros((4, 5), bool)
    half[:2] = True
    assert jaccard(empty, empty) == 1.0
    assert jaccard(full, empty) == 0.0 and jaccard(empty, full) == 0.0
    assert jaccard(half, full) == pytest.approx(0.5)
    void = np.zeros((4, 5), bool)
    void[2:] = True
    assert jaccard(half, full, void) == 1.0  # the disagreeing rows are void


def test_boundary_f_hand_cases():
    empty = np.zeros((30, 40), bool)
    square = np.zeros((30, 40), bool)
    square[5:15, 5:15] = True
    far = np.zeros((30, 40), bool)
    far[20:28, 28:38] = True
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(square, empty) == 0.0 and boundary_f(empty, square) == 0.0
    assert boundary_f(square, square) == 1.0
    assert boundary_f(far, square, bound_th=2) == 0.0
    # shifted by 1 px, tolerance 1 px (disk radius 1): every boundary pixel still matched
    assert boundary_f(np.roll(square, 1, axis=1), square, bound_th=1) == 1.0


def test_seg2bmap_hand_case():
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    expected = np.array(
        [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
        dtype=bool,
    )
    assert (seg2bmap(torch.from_numpy(m)).numpy() == expected).all()
    assert (_ref_seg2bmap(m) == expected).all()
    # last row: only the east neighbour counts; last column: only the south one
    m = np.zeros((3, 3), bool)
    m[2, 0] = m[0, 2] = True
    assert (seg2bmap(torch.from_numpy(m)).numpy() == _ref_seg2bmap(m)).all()


def test_disk_radius_matches_reference():
    assert disk_radius(0.008, 480, 854) == 8
    for h, w in [(1, 1), (100, 100), (1080, 1920), (481, 853)]:
        assert disk_radius(0.008, h, w) == int(np.ceil(0.008 * np.linalg.norm((h, w))))
    assert disk_radius(3, 10, 10) == 3
    with pytest.raises(ValueError):
        disk_radius(2.5, 10, 10)


def test_matches_literal_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 90))
        gt = _blobs(rng, h, w, int(rng.integers(0, 4)))
        pred = np.roll(gt, tuple(rng.integers(-6, 7, size=2)), (0, 1)) if i % 2 else _blobs(rng, h, w, 2)
        void = rng.random((h, w)) < 0.05 if i % 3 == 0 else None
        bound_th = 0.008 if i % 4 else float(rng.integers(1, 6))
        assert boundary_f(pred, gt, void, bound_th) == _ref_f(pred, gt, void, bound_th), i
        inter = (pred & gt & ~(void if void is not None else False)).sum()
        union = ((pred | gt) & ~(void if void is not None else False)).sum()
        assert jaccard(pred, gt, void) == (1.0 if union == 0 else inter / union)


def test_batched_torch_equals_per_frame_numpy():
    rng = np.random.default_rng(1)
    t, n, h, w = 4, 3, 48, 64
    gt = np.stack([np.stack([_blobs(rng, h, w, 2) for _ in range(n)]) for _ in range(t)])
    pred = np.roll(gt, 2, axis=-1)
    pred[1, 2] = False
    void = rng.random((t, h, w)) < 0.02
    j = jaccard(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(void))
    f = boundary_f(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(void))
    assert isinstance(f, torch.Tensor) and f.shape == (t, n) and f.dtype == torch.float64
    for a in range(t):
        for b in range(n):
            assert f[a, b].item() == boundary_f(pred[a, b], gt[a, b], void[a])
            assert j[a, b].item() == jaccard(pred[a, b], gt[a, b], void[a])
    # non-bool masks are read as > 0 (0/1 floats, logits)
    as_logits = jaccard(torch.from_numpy(pred).float() * 2 - 1, torch.from_numpy(gt).float())
    assert (as_logits.numpy() == jaccard(pred, gt)).all()


# ---------------------------------------------------------------- per sequence and dataset


def test_frame_statistics_hand_case():
    values = np.array([0.9, 0.7, 0.4, 0.2, 0.6])
    mean, recall, decay = frame_statistics(values)
    assert mean == pytest.approx(0.56)
    assert recall == pytest.approx(3 / 5)
    # 5 frames: bins [0:2], [1:3], [2:4], [3:5] -> first (0.9, 0.7), last (0.2, 0.6)
    assert decay == pytest.approx(0.8 - 0.4)
    # 4 frames: ids 0, 1, 2, 2, 3 -> first bin (v0, v1), last (v2, v3)
    assert frame_statistics(np.array([1.0, 1.0, 0.0, 0.0]))[2] == pytest.approx(1.0)
    assert frame_statistics(np.array([0.3]))[2] == 0.0


def test_sequence_scores_and_summarize():
    rng = np.random.default_rng(2)
    gt = np.stack([np.stack([_blobs(rng, 32, 32, 1), _blobs(rng, 32, 32, 1)]) for _ in range(6)])
    scores = sequence_scores(gt, gt)
    assert scores["J"].shape == (2, 4) and (scores["J"] == 1).all() and (scores["F"] == 1).all()
    assert sequence_scores(gt, gt, skip_first_last=False)["F"].shape == (2, 6)
    with pytest.raises(ValueError):
        sequence_scores(gt[:2], gt[:2])
    result = summarize([np.array([1.0, 0.0]), np.array([0.5, 0.5, 1.0])], [np.ones(2), np.zeros(3)])
    assert set(result) == {"J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay"}
    assert result["J"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result["F"] == pytest.approx(0.5)
    assert result["J&F"] == pytest.approx((result["J"] + result["F"]) / 2)


# ---------------------------------------------------------------- folders


def _palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [128] * (253 * 3))
    im.save(path)


def _make_sequence(root: Path, seq: str, frames: int = 5, size=(24, 32)) -> list[np.ndarray]:
    rng = np.random.default_rng(len(seq))
    out = []
    for i in range(frames):
        lab = _blobs(rng, *size, 1).astype(np.uint8) + 2 * (_blobs(rng, *size, 1)).astype(np.uint8)
        lab[lab == 3] = 255  # overlap marked void
        _palette_png(root / seq / f"{i:05d}.png", lab)
        out.append(lab)
    return out


def test_folder_layouts_agree(tmp_path: Path):
    gt_root = tmp_path / "DAVIS" / "Annotations" / "480p"
    labels = _make_sequence(gt_root, "a")
    pred = tmp_path / "pred"
    per_obj = tmp_path / "per_object"
    for i, lab in enumerate(labels):
        shifted = np.roll(np.where(lab == 255, 0, lab), 1, axis=1)
        _palette_png(pred / "a" / f"{i:05d}.png", shifted)
        for obj in (1, 2):
            (per_obj / "a" / f"{obj:03d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray((shifted == obj).astype(np.uint8) * 255).save(
                per_obj / "a" / f"{obj:03d}" / f"{i:05d}.png"
            )
    by_root = evaluate_folders(pred, tmp_path / "DAVIS")
    by_seqs = evaluate_folders(pred, gt_root)
    by_obj = evaluate_folders(per_obj, gt_root)
    assert by_root == by_seqs == by_obj
    assert set(by_root) == {"J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay", "per_sequence"}
    # the same numbers straight from the arrays (void counts as background, as in davis2017-evaluation)
    gt = np.stack([np.stack([lab == 1, lab == 2]) for lab in labels])
    pr = np.stack(
        [np.stack([np.roll(np.where(lab == 255, 0, lab), 1, axis=1) == o for o in (1, 2)]) for lab in labels]
    )
    scores = sequence_scores(pr, gt)
    assert by_root["J"] == pytest.approx(scores["J"].mean(axis=1).mean(), abs=1e-12)
    assert by_root["per_sequence"]["a"]["F"] == pytest.approx(scores["F"].mean(axis=1).mean(), abs=1e-12)
    assert evaluate_folders(gt_root, gt_root)["J&F"] == 1.0
    # ignore_void=True leaves the void pixels out instead
    void = np.stack([lab == 255 for lab in labels])
    ignored = evaluate_folders(pred, gt_root, ignore_void=True)
    assert ignored["J"] == pytest.approx(sequence_scores(pr, gt, void)["J"].mean(axis=1).mean(), abs=1e-12)
    assert ignored["J"] != by_root["J"]


def test_grayscale_0_255_and_0_1_masks_are_object_one(tmp_path: Path):
    rng = np.random.default_rng(3)
    for i in range(4):
        m = _blobs(rng, 20, 30, 2)
        (tmp_path / "gt" / "s").mkdir(parents=True, exist_ok=True)
        (tmp_path / "pred" / "s").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(tmp_path / "gt" / "s" / f"{i:05d}.png")
        _palette_png(tmp_path / "pred" / "s" / f"{i:05d}.png", m.astype(np.uint8))
    assert evaluate_folders(tmp_path / "pred", tmp_path / "gt")["J&F"] == 1.0


def test_missing_frame_is_named(tmp_path: Path):
    _make_sequence(tmp_path / "gt", "a")
    _make_sequence(tmp_path / "pred", "a")
    (tmp_path / "pred" / "a" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"pred/a/00002\.png"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    # the first and last frames are not scored, so they may be missing
    (tmp_path / "pred" / "a" / "00000.png").unlink()
    _make_sequence(tmp_path / "pred", "a")
    (tmp_path / "pred" / "a" / "00000.png").unlink()
    evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_size_mismatch_is_named(tmp_path: Path):
    _make_sequence(tmp_path / "gt", "a")
    _make_sequence(tmp_path / "pred", "a")
    _palette_png(tmp_path / "pred" / "a" / "00003.png", np.zeros((24, 29), np.uint8))  # 1-2 px off: resized
    with pytest.raises(DataError, match=r"pred/a/00003\.png.*29x24"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_missing_sequence_object_and_unknown_id(tmp_path: Path):
    _make_sequence(tmp_path / "gt", "a")
    with pytest.raises(DataError, match=r"pred/a"):
        (tmp_path / "pred").mkdir()
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    for i in range(5):
        _palette_png(tmp_path / "pred" / "a" / f"{i:05d}.png", np.full((24, 32), 7, np.uint8))
    with pytest.raises(DataError, match=r"00001\.png.*\[7\]"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    obj = tmp_path / "obj" / "a" / "001"
    obj.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(obj / f"{i:05d}.png")
    with pytest.raises(DataError, match=r"obj/a/002"):
        evaluate_folders(tmp_path / "obj", tmp_path / "gt")


@needs_shared_data
def test_edge_cases_void_sparse_and_uneven_sizes():
    interactive = SHARED_DATA / "edge_cases" / "davis2017_interactive"
    with pytest.raises(DataError, match="tennis"):
        evaluate_folders(interactive / "Annotations" / "480p", interactive, sequences=["tennis"])
    res = evaluate_folders(interactive / "Annotations" / "480p", interactive, skip_first_last=False)
    assert res["J&F"] == 1.0 and set(res["per_sequence"]) == {"bear", "blackswan", "tennis"}
    # judo: masks on frames 0, 5, 8, 13, one new object on each, and 00005.png is 853 px wide
    sparse = SHARED_DATA / "edge_cases" / "sparse_annotations"
    res = evaluate_folders(sparse / "Annotations" / "480p", sparse, sequences=["judo"])
    assert res["J&F"] == 1.0


@pytest.mark.slow
@needs_shared_data
def test_osvos_davis2016_reference_figures():
    start = time.perf_counter()
    res = evaluate_folders(SHARED_DATA / "reference" / "osvos_davis2016_pred", SHARED_DATA / "davis2016")
    elapsed = time.perf_counter() - start
    assert len(res["per_sequence"]) == 20
    assert res["J&F"] == pytest.approx(0.766093, abs=1e-6)
    assert res["J"] == pytest.approx(0.755841, abs=1e-6)
    assert res["F"] == pytest.approx(0.776346, abs=1e-6)
    assert res["per_sequence"]["blackswan"]["J"] == pytest.approx(0.943020, abs=1e-6)
    assert res["per_sequence"]["blackswan"]["F"] == pytest.approx(0.974096, abs=1e-6)
    assert res["per_sequence"]["bmx-trees"]["J"] == pytest.approx(0.540531, abs=1e-6)
    assert res["per_sequence"]["bmx-trees"]["F"] == pytest.approx(0.766341, abs=1e-6)
    assert all(math.isfinite(v) for k, v in res.items() if k != "per_sequence")
    assert elapsed < 60, f"evaluating DAVIS-2016 took {elapsed:.1f} s"
