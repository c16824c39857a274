"""Data pipeline stages on synthetic tensors: sampling, transforms, prompts, collate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts, VideoSample, collate_videos
from sam2train.config import AugmentConfig, PromptsConfig
from sam2train.data.frames import normalize, resize_frame, resize_masks
from sam2train.data.prompts import make_prompts, noisy_box, sample_points, tight_box
from sam2train.data.sampling import (
    EpochSampler,
    build_index,
    clip_positions,
    sample_generator,
    select_objects,
)
from sam2train.data.sources.base import FrameMasks, FrameRef, VideoInfo
from sam2train.data.transforms import ClipAugment
from sam2train.errors import DataError


def _video(name: str, n: int, annotated_every: int = 1) -> VideoInfo:
    frames = [FrameRef(i, Path(f"{name}/{i:05d}.jpg"), i % annotated_every == 0) for i in range(n)]
    return VideoInfo(name, frames, (32, 32), [1, 2])


# ---- sampling ------------------------------------------------------------------------------------------------
def test_index_windows_follow_stride_and_skip_short_videos() -> None:
    videos = [_video("long", 10), _video("short", 2), _video("sparse", 12, annotated_every=3)]
    with pytest.warns(UserWarning, match=r"skipped 2 video\(s\).*short \(2\).*sparse \(4\)"):
        index = build_index(videos, clip_length=5, stride=2, train=True)
    assert [(r.video, r.start) for r in index] == [(0, 0), (0, 2), (0, 4)]
    assert [r.jitter for r in index] == [1, 1, 1]
    # a window never runs past the last annotated frame, whatever the jitter
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pos = clip_positions(videos[0], index[-1], g)
        assert len(pos) == 5 and pos[-1] <= 9


def test_clips_are_made_of_annotated_frames_only() -> None:
    video = _video("sparse", 12, annotated_every=3)
    index = build_index([video], clip_length=3, stride=1, train=True)
    pos = clip_positions(video, index[0], None)
    assert pos == [0, 3, 6] and all(video.frames[p].annotated for p in pos)


def test_validation_windows_cover_every_frame_deterministically() -> None:
    videos = [_video("a", 10)]
    whole = build_index(videos, None, stride=4, train=False)
    assert [(r.start, r.length) for r in whole] == [(0, 10)]
    windows = build_index(videos, 4, stride=1, train=False)
    assert [(r.start, r.length) for r in windows] == [(0, 4), (4, 4), (6, 4)]


def test_no_usable_video_is_an_error() -> None:
    with pytest.raises(DataError, match="clip_length=8"), pytest.warns(UserWarning):
        build_index([_video("a", 3)], clip_length=8, stride=1, train=True, source_name="x")


def test_epoch_sampler_shards_and_reshuffles() -> None:
    a = EpochSampler(10, shuffle=True, seed=1)
    first = list(a)
    assert sorted(first) == list(range(10))
    a.set_epoch(1)
    second = list(a)
    assert sorted(x - 10 for x in second) == list(range(10)) and [x - 10 for x in second] != first
    shards = [list(EpochSampler(10, True, 1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))
    val = [list(EpochSampler(5, False, 1, rank=r, world_size=2)) for r in range(2)]
    assert val == [[0, 2, 4], [1, 3]]


def test_sample_generator_is_a_function_of_seed_epoch_index() -> None:
    draw = lambda *k: torch.rand(3, generator=sample_generator(*k))  # noqa: E731
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    assert not torch.equal(draw(1, 2, 3), draw(1, 3, 3)) and not torch.equal(draw(1, 2, 3), draw(2, 2, 3))


def test_select_objects_present_in_first_frame() -> None:
    masks = np.zeros((4, 8, 8), bool)
    masks[0, 1, 1] = masks[2, 3, 3] = masks[3, 5, 5] = True  # object 20 is empty in this frame
    fm = FrameMasks(np.array([10, 20, 30, 40]), masks, np.zeros((8, 8), bool))
    assert select_objects(fm, 2, None) == [10, 30]
    picks = {tuple(select_objects(fm, 2, torch.Generator().manual_seed(s))) for s in range(30)}
    assert len(picks) > 1 and all(20 not in p and len(p) == 2 for p in picks)


# ---- transforms ----------------------------------------------------------------------------------------------
def test_frame_and_mask_resize_match_the_predictor() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    out = resize_frame(frame, 32)
    expected = np.asarray(Image.fromarray(frame).resize((32, 32), Image.BICUBIC))
    assert out.shape == (3, 32, 32) and np.array_equal(out.permute(1, 2, 0).numpy(), expected)
    mask = torch.zeros(48, 80, dtype=torch.bool)
    mask[10:30, 20:61] = True
    ref = F.interpolate(
        mask[None, None].float(), (32, 32), mode="bilinear", align_corners=False, antialias=True
    )
    assert torch.equal(resize_masks(mask, 32), ref[0, 0] >= 0.5)


def test_normalize_uses_imagenet_statistics() -> None:
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(
        normalize(white)[:, 0, 0],
        torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]),
    )


def test_augmentation_is_identical_across_frames_and_keeps_masks_binary() -> None:
    torch.manual_seed(0)
    frame = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    video = frame.expand(3, 3, 64, 64).clone()
    masks = torch.zeros(3, 2, 64, 64, dtype=torch.bool)
    masks[:, 0, 10:40, 5:30] = True
    masks[:, 1, 30:60, 35:60] = True
    void = torch.zeros(3, 64, 64, dtype=torch.bool)
    aug = ClipAugment(AugmentConfig(hflip_prob=0.5, degrees=20, shear=10, scale_min=0.6))
    changed = 0
    for seed in range(6):
        v, m, z = aug(video, masks, void, torch.Generator().manual_seed(seed))
        assert v.dtype == torch.uint8 and m.dtype == torch.bool and z.dtype == torch.bool
        assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2])
        assert torch.equal(m[0], m[2])
        changed += int(not torch.equal(m, masks))
        again = aug(video, masks, void, torch.Generator().manual_seed(seed))
        assert torch.equal(again[0], v) and torch.equal(again[1], m)
    assert changed >= 5


def test_horizontal_flip_moves_masks_with_frames() -> None:
    video = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    video[:, :, :, :4] = 255
    masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    masks[:, :, :, :4] = True
    cfg = AugmentConfig(
        hflip_prob=1.0,
        degrees=0,
        translate=0,
        shear=0,
        scale_min=1.0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )
    v, m, _ = ClipAugment(cfg)(video, masks, torch.zeros(2, 16, 16, dtype=torch.bool), torch.Generator())
    assert m[:, :, :, -4:].all() and not m[:, :, :, :-4].any() and (v[:, :, :, -4:] == 255).all()


# ---- prompts -------------------------------------------------------------------------------------------------
def _square(size: int = 32, box: tuple[int, int, int, int] = (8, 4, 20, 24)) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    x0, y0, x1, y1 = box
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_boxes_are_tight_at_validation_and_jittered_in_training() -> None:
    mask = _square()
    assert tight_box(mask).tolist() == [8, 4, 20, 24]
    assert torch.equal(noisy_box(mask, 0.1, None), tight_box(mask))
    jittered = [noisy_box(mask, 0.1, torch.Generator().manual_seed(s)) for s in range(20)]
    deltas = torch.stack([j - tight_box(mask) for j in jittered]).abs()
    assert (
        deltas.max() > 0
        and (deltas[:, [0, 2]] <= 0.1 * 12 + 1e-5).all()
        and (deltas[:, [1, 3]] <= 0.1 * 20 + 1e-5).all()
    )


def test_first_click_is_farthest_from_the_boundary() -> None:
    mask = _square(box=(8, 4, 20, 16))  # 13 x 13: the centre is the one farthest pixel
    coords, labels = sample_points(mask, num_pos=3, num_neg=2, g=torch.Generator().manual_seed(0))
    assert coords[0].tolist() == [14.0, 10.0]
    assert labels.tolist() == [1, 1, 1, 0, 0]
    for (x, y), lab in zip(coords.long().tolist(), labels.tolist()):
        assert bool(mask[y, x]) == bool(lab)


def test_mixed_prompts_follow_probabilities_and_are_deterministic() -> None:
    masks = torch.stack([_square()] * 400)
    cfg = PromptsConfig(type="mixed", num_pos_points=2, num_neg_points=1)
    p = make_prompts(masks, cfg, torch.Generator().manual_seed(0), train=True)
    share = [(p.kind == k).float().mean().item() for k in (PROMPT_MASK, PROMPT_BOX, PROMPT_POINT)]
    assert abs(share[0] - 0.5) < 0.08 and abs(share[1] - 0.25) < 0.08 and abs(share[2] - 0.25) < 0.08
    pts = p.kind == PROMPT_POINT
    assert (p.point_labels[pts] >= 0).all() and (p.point_labels[~pts] == -1).all()
    q = make_prompts(masks, cfg, torch.Generator().manual_seed(0), train=True)
    assert torch.equal(p.kind, q.kind) and torch.equal(p.point_coords, q.point_coords)


# ---- collate -------------------------------------------------------------------------------------------------
def _sample(n: int, p: int, t: int = 2, s: int = 16) -> VideoSample:
    prompts = Prompts(
        kind=torch.full((n,), PROMPT_POINT),
        point_coords=torch.ones(n, p, 2),
        point_labels=torch.ones(n, p, dtype=torch.long),
        boxes=torch.zeros(n, 4),
        masks=torch.ones(n, s, s),
    )
    return VideoSample(
        images=torch.zeros(t, 3, s, s),
        masks=torch.ones(t, n, s, s),
        ignore=torch.zeros(t, s, s, dtype=torch.bool),
        prompts=prompts,
        video_name=f"v{n}",
        frame_indices=torch.arange(t),
        object_ids=torch.arange(1, n + 1),
        orig_size=(20, 30),
        num_video_frames=9,
    )


def test_collate_pads_objects_and_points() -> None:
    batch = collate_videos([_sample(1, 2), _sample(3, 1)])
    assert batch.shape == (2, 2, 3)
    assert batch.images.shape == (2, 2, 3, 16, 16) and batch.masks.shape == (2, 2, 3, 16, 16)
    assert batch.valid[0].tolist() == [[True, False, False]] * 2 and batch.valid[1].all()
    assert batch.object_ids.tolist() == [[1, -1, -1], [1, 2, 3]]
    assert batch.prompts.kind[0].tolist() == [PROMPT_POINT, -1, -1]
    assert (
        batch.prompts.point_labels.shape == (2, 3, 2)
        and batch.prompts.point_labels[1, :, 1].tolist() == [-1] * 3
    )
    assert batch.masks[0, :, 1:].sum() == 0 and batch.video_names == ["v1", "v3"]
    assert batch.orig_sizes.tolist() == [[20, 30]] * 2 and batch.num_video_frames.tolist() == [9, 9]


def test_collate_rejects_mixed_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        collate_videos([_sample(1, 1, t=2), _sample(1, 1, t=3)])
