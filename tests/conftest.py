"""Shared pytest fixtures: a tiny random SAM 2, the shared real data, and synthetic video batches."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sam2train.batch import (
    PROMPT_BOX,
    PROMPT_MASK,
    PROMPT_POINT,
    Prompts,
    VideoBatch,
    VideoSample,
    collate_videos,
)
from sam2train.config import ModelConfig

TINY_SIZE = 128
PROMPT_KINDS = {"mask": PROMPT_MASK, "box": PROMPT_BOX, "point": PROMPT_POINT, "points": PROMPT_POINT}


def build_random_sam2(config: str = "sam2.1_hiera_t", image_size: int = TINY_SIZE, seed: int = 0):
    """A randomly initialised SAM 2 (train mode, CPU), without the random-init warning."""
    from sam2train.model import build_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_model(ModelConfig(config=config, image_size=image_size, checkpoint=None))


@pytest.fixture(scope="session")
def sam2_factory() -> Callable[..., torch.nn.Module]:
    """`build(config="sam2.1_hiera_t", image_size=128, seed=0)`: a new random SAM 2 (train mode, CPU)."""
    return build_random_sam2


@pytest.fixture(scope="session")
def tiny_sam2():
    """Random hiera-t SAM 2.1 at 128 px, built once per session. Do not modify: use `fresh_tiny_sam2`."""
    return build_random_sam2()


@pytest.fixture
def fresh_tiny_sam2(tiny_sam2):
    """A private copy of `tiny_sam2` (train mode, everything trainable) that a test may change."""
    model = copy.deepcopy(tiny_sam2).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared real data (`../shared/data` next to the repository); skips when absent."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


def _blob_masks(t: int, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """[t, n, size, size] 0/1: one rectangle per object, drifting a few pixels per frame, never empty."""
    masks = torch.zeros(t, n, size, size)
    for j in range(n):
        h, w = (int(v) for v in torch.randint(size // 6, size // 3, (2,), generator=gen))
        y, x = (int(v) for v in torch.randint(0, size - max(h, w) - t * 2, (2,), generator=gen))
        for i in range(t):
            masks[i, j, y + i : y + i + h, x + 2 * i : x + 2 * i + w] = 1.0
    return masks


def prompts_from_masks(masks: torch.Tensor, kinds: list[str]) -> Prompts:
    """First-frame prompts for masks [N, H, W]: 'mask', 'box' (tight box), 'point' (one positive click at the
    box centre) or 'points' (that click plus a negative click outside the object)."""
    n = masks.shape[0]
    kind = torch.zeros(n, dtype=torch.long)
    coords = torch.zeros(n, 2, 2)
    labels = torch.full((n, 2), -1, dtype=torch.long)
    boxes = torch.zeros(n, 4)
    for j, name in enumerate(kinds):
        ys, xs = masks[j].nonzero(as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
        boxes[j] = box
        kind[j] = PROMPT_KINDS[name]
        if name in ("point", "points"):
            coords[j, 0] = (box[:2] + box[2:]) / 2
            labels[j, 0] = 1
        if name == "points":
            outside = (~masks[j].bool()).nonzero()[0]
            coords[j, 1] = outside.flip(0).float()
            labels[j, 1] = 0
    return Prompts(kind=kind, point_coords=coords, point_labels=labels, boxes=boxes, masks=masks.clone())


@pytest.fixture
def make_video_batch() -> Callable[..., VideoBatch]:
    """Factory: `make(kinds=[["mask", "box"], ["point"]], t=3, size=128, seed=0, num_video_frames=None)` gives a
    VideoBatch of random frames and drifting rectangles, one clip per inner list, padded by `collate_videos`."""

    def make(
        kinds: list[list[str]] | None = None,
        t: int = 3,
        size: int = TINY_SIZE,
        seed: int = 0,
        num_video_frames: int | None = None,
    ) -> VideoBatch:
        gen = torch.Generator().manual_seed(seed)
        samples = []
        for b, clip_kinds in enumerate(kinds or [["mask"]]):
            n = len(clip_kinds)
            masks = _blob_masks(t, n, size, gen)
            samples.append(
                VideoSample(
                    images=torch.randn(t, 3, size, size, generator=gen),
                    masks=masks,
                    ignore=torch.zeros(t, size, size, dtype=torch.bool),
                    prompts=prompts_from_masks(masks[0], clip_kinds),
                    video_name=f"synthetic_{b}",
                    frame_indices=torch.arange(t),
                    object_ids=torch.arange(1, n + 1),
                    orig_size=(size, size),
                    num_video_frames=num_video_frames or t,
                )
            )
        return collate_videos(samples)

    return make
