"""The per-sample training schedule of ClipDataset: objects appearing later, conditioning and correction frames,
reverse time, uniform first clicks, and reproducibility per (seed, epoch, index)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, VideoSample, collate_videos
from sam2train.config import load_config
from sam2train.data.datamodule import open_split
from sam2train.data.dataset import ClipDataset
from sam2train.data.prompts import sample_points, tight_box

SIZE = 64  # frames at the model size: the resize is a copy, so masks can be compared pixel for pixel
FRAMES = 6
LATE_FIRST = 2  # object 2 is absent from frames 0 and 1
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253)


def _labels(t: int) -> np.ndarray:
    """Object 1: a box drifting right in every frame. Object 2: a small box on frame 2, a large one after."""
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    labels[4:20, 4 + 2 * t : 24 + 2 * t] = 1
    if t == LATE_FIRST:
        labels[38:46, 30:50] = 2
    elif t > LATE_FIRST:
        labels[30:60, 8:60] = 2
    return labels


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAVIS-layout dataset of one video whose object 2 first appears on frame 2."""
    root = tmp_path_factory.mktemp("late")
    (root / "JPEGImages" / "late").mkdir(parents=True)
    (root / "Annotations" / "late").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t in range(FRAMES):
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / "late" / f"{t:05d}.jpg", quality=90)
        png = Image.fromarray(_labels(t), mode="P")
        png.putpalette(PALETTE)
        png.save(root / "Annotations" / "late" / f"{t:05d}.png")
    return root


def _dataset(path: Path, *extra: str, train: bool = True) -> ClipDataset:
    cfg = load_config(
        None,
        [
            f"data.train_path={path}",
            f"data.val_path={path}",
            f"data.clip_length={FRAMES}",
            "data.stride=1",
            "data.num_workers=0",
            "data.augment=false",
            f"model.image_size={SIZE}",
            *extra,
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return open_split(cfg, train=train)[1]


def _expected(k_obj: int, t: int) -> torch.Tensor:
    return torch.from_numpy(_labels(t) == k_obj)


# ---- objects appearing later ---------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_an_object_absent_on_frame_0_is_prompted_on_its_first_frame(late: Path, train: bool) -> None:
    for kind, code in (("mask", PROMPT_MASK), ("box", PROMPT_BOX), ("point", PROMPT_POINT)):
        s = _dataset(late, f"prompts.type={kind}", f"prompts.val_type={kind}", train=train)[0]
        assert s.object_ids.tolist() == [1, 2] and s.prompt_frames.tolist() == [0, LATE_FIRST]
        frame2 = _expected(2, LATE_FIRST)
        assert not s.masks[:LATE_FIRST, 1].any() and torch.equal(s.masks[LATE_FIRST, 1].bool(), frame2)
        assert s.prompts.kind.tolist() == [code, code]
        assert torch.equal(s.prompts.masks[1].bool(), frame2)
        assert torch.equal(s.prompts.masks[0].bool(), _expected(1, 0))
        if kind == "box" and not train:  # validation boxes are tight: exactly the frame-2 extent
            assert s.prompts.boxes[1].tolist() == tight_box(frame2).tolist() == [30, 38, 49, 45]
        if kind == "point":
            x, y = s.prompts.point_coords[1, 0].long().tolist()
            assert frame2[y, x] and s.prompts.point_labels[1, 0] == 1


def test_later_objects_off_keeps_only_first_frame_objects(late: Path) -> None:
    for train in (True, False):
        s = _dataset(late, "data.track_later_objects=false", train=train)[0]
        assert s.object_ids.tolist() == [1] and s.prompt_frames.tolist() == [0]


def test_augmented_prompts_come_from_each_objects_first_frame(late: Path) -> None:
    ds = _dataset(late, "data.augment=true", "prompts.type=mask", "data.clip_length=4")
    seen = set()
    for item in range(3 * 8):
        s = ds[item]
        present = s.masks.flatten(2).any(2)  # [T, N]
        for k in range(len(s.object_ids)):
            pf = int(s.prompt_frames[k])
            assert present[pf, k] and not present[:pf, k].any()
            assert torch.equal(s.prompts.masks[k], s.masks[pf, k])
            seen.add((int(s.frame_indices[0]), int(s.object_ids[k]), pf))
    # window 0 prompts object 2 on its 3rd frame, window 1 on its 2nd, window 2 on its 1st
    assert {(0, 2, 2), (1, 2, 1), (2, 2, 0)} <= seen


# ---- conditioning and correction frames ----------------------------------------------------------------------
def test_cond_and_correct_frames_cover_their_ranges(late: Path) -> None:
    ds = _dataset(late, "prompts.max_cond_frames=3", "prompts.frames_to_correct=5")
    counts, f_counts = set(), set()
    for epoch in range(150):
        s = ds[epoch]
        cond, correct = s.cond_frames.tolist(), s.correct_frames.tolist()
        c, f = len(cond) + 1, len(correct)
        assert 1 <= c <= 3 and c <= f <= 5
        assert len(set(cond)) == len(cond) and all(1 <= t < FRAMES for t in cond)
        assert len(set(correct)) == f and all(0 <= t < FRAMES for t in correct)
        assert correct[:c] == [0, *cond]  # frame 0, the extra cond frames in their order, then the others
        counts.add(c)
        f_counts.add((c, f))
    assert counts == {1, 2, 3}
    assert f_counts == {(c, f) for c in (1, 2, 3) for f in range(c, 6)}


def test_counts_are_capped_by_the_clip_length(late: Path) -> None:
    ds = _dataset(late, "data.clip_length=3", "prompts.max_cond_frames=5", "prompts.frames_to_correct=8")
    samples = [ds[i] for i in range(3 * 30)]
    assert max(len(s.cond_frames) for s in samples) == 2 and max(len(s.correct_frames) for s in samples) == 3
    assert {tuple(sorted(s.correct_frames.tolist())) for s in samples} == {(0,), (0, 1), (0, 2), (0, 1, 2)}


def test_defaults_and_validation_have_no_schedule(late: Path) -> None:
    s = _dataset(late)[0]
    assert s.cond_frames.tolist() == [] and s.correct_frames.tolist() == []
    v = _dataset(late, "prompts.max_cond_frames=3", "prompts.frames_to_correct=5", train=False)[0]
    assert v.cond_frames.tolist() == [] and v.correct_frames.tolist() == []
    t = _dataset(late, "prompts.max_cond_frames=3")
    assert all(t[e].correct_frames.tolist() == [] for e in range(10))
    assert any(len(t[e].cond_frames) > 0 for e in range(10))


def test_schedule_collates_padded(late: Path) -> None:
    ds = _dataset(late, "prompts.max_cond_frames=3", "prompts.frames_to_correct=5")
    samples = [ds[e] for e in range(4)]
    batch = collate_videos(samples)
    c_max = max(len(s.cond_frames) for s in samples)
    assert batch.cond_frames.shape == (4, c_max) and batch.prompt_frames.tolist() == [[0, LATE_FIRST]] * 4
    for b, s in enumerate(samples):
        row = batch.correct_frames[b]
        assert row[row >= 0].tolist() == s.correct_frames.tolist()
    assert batch.seeds.tolist() == [s.seed for s in samples]


# ---- reverse time --------------------------------------------------------------------------------------------
def test_reverse_time_plays_the_clip_backwards(late: Path) -> None:
    fwd = _dataset(late, "data.track_later_objects=false")[0]
    back = _dataset(late, "data.track_later_objects=false", "data.reverse_time_prob=1")[0]
    assert fwd.frame_indices.tolist() == list(range(FRAMES))
    assert back.frame_indices.tolist() == list(range(FRAMES))[::-1]
    assert torch.equal(back.images, fwd.images.flip(0))
    # reversed, object 2 is on the (new) first frame, so it is tracked even without track_later_objects
    assert fwd.object_ids.tolist() == [1] and back.object_ids.tolist() == [1, 2]
    assert torch.equal(back.masks[:, 0], fwd.masks[:, 0].flip(0))
    assert torch.equal(back.masks[:, 1].bool(), torch.stack([_expected(2, t) for t in range(FRAMES)][::-1]))
    assert torch.equal(back.prompts.masks[1].bool(), _expected(2, FRAMES - 1))


def test_reverse_time_is_a_training_coin_flip(late: Path) -> None:
    ds = _dataset(late, "data.reverse_time_prob=0.5")
    orders = [ds[e].frame_indices.tolist() for e in range(40)]
    assert set(map(tuple, orders)) == {tuple(range(FRAMES)), tuple(range(FRAMES))[::-1]}
    val = _dataset(late, "data.reverse_time_prob=1", train=False)[0]
    assert val.frame_indices.tolist() == list(range(FRAMES))


# ---- first click ---------------------------------------------------------------------------------------------
def test_uniform_first_point_lands_inside_and_varies() -> None:
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:12, 6:26] = True
    mask[12:28, 6:10] = True  # an L: its centre point is fixed, uniform clicks spread over it
    firsts = set()
    for s in range(40):
        coords, labels = sample_points(mask, 2, 1, torch.Generator().manual_seed(s), first="uniform")
        assert labels.tolist() == [1, 1, 0]
        for (x, y), lab in zip(coords.long().tolist(), labels.tolist()):
            assert bool(mask[y, x]) == bool(lab)
        firsts.add(tuple(coords[0].tolist()))
    assert len(firsts) > 10
    center = {
        tuple(sample_points(mask, 1, 0, torch.Generator().manual_seed(s))[0][0].tolist()) for s in range(5)
    }
    assert len(center) == 1


def test_uniform_first_point_in_training_centre_at_validation(late: Path) -> None:
    opts = ("prompts.type=point", "prompts.val_type=point", "prompts.first_point=uniform")
    ds = _dataset(late, *opts)
    points = set()
    for e in range(20):
        s = ds[e]
        for k in range(2):
            x, y = s.prompts.point_coords[k, 0].long().tolist()
            assert s.prompts.masks[k, y, x] == 1
        points.add(tuple(s.prompts.point_coords[1, 0].tolist()))
    assert len(points) > 5
    centre = _dataset(late, "prompts.type=point", "prompts.val_type=point", train=False)[0]
    val = _dataset(late, *opts, train=False)[0]
    assert torch.equal(val.prompts.point_coords, centre.prompts.point_coords)


# ---- reproducibility -----------------------------------------------------------------------------------------
ALL_OPTIONS = (
    "data.augment=true",
    "data.clip_length=4",
    "data.reverse_time_prob=0.5",
    "prompts.type=mixed",
    "prompts.first_point=uniform",
    "prompts.max_cond_frames=3",
    "prompts.frames_to_correct=4",
)


def _same(a: VideoSample, b: VideoSample) -> bool:
    tensors = ("images", "masks", "ignore", "frame_indices", "object_ids", "prompt_frames")
    tensors += ("cond_frames", "correct_frames")
    prompts = ("kind", "point_coords", "point_labels", "boxes", "masks")
    return (
        all(torch.equal(getattr(a, f), getattr(b, f)) for f in tensors)
        and all(torch.equal(getattr(a.prompts, f), getattr(b.prompts, f)) for f in prompts)
        and a.seed == b.seed
    )


def test_a_sample_is_a_function_of_seed_epoch_and_index(late: Path) -> None:
    a, b = _dataset(late, *ALL_OPTIONS), _dataset(late, *ALL_OPTIONS)
    n = len(a)
    assert n == 3
    items = [0, 1, 2, n + 1, 5 * n + 2]
    for item in reversed(items):  # a different order: nothing carries over from one sample to the next
        assert _same(a[item], b[item])
    assert _same(a[items[0]], a[items[0]])
    assert not _same(a[1], a[n + 1])  # same window, next epoch
    other_seed = _dataset(late, *ALL_OPTIONS, "seed=7")
    assert not _same(a[1], other_seed[1])
    plain = _dataset(late)
    assert len({plain[e].seed for e in range(20)}) == 20
