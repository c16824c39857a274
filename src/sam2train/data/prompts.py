"""Prompts per object, drawn from each object's (resized, augmented) mask on its prompt frame.

Coordinates are pixels of the square model input, (x, y), as SAM 2's prompt encoder takes them.
"""

from __future__ import annotations

import numpy as np
import torch

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts
from sam2train.config import PromptsConfig

_KINDS = {"mask": PROMPT_MASK, "box": PROMPT_BOX, "point": PROMPT_POINT}


def tight_box(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] bool (non-empty) -> [4] float (x0, y0, x1, y1), inclusive pixel extent."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()


def noisy_box(mask: torch.Tensor, noise: float, g: torch.Generator | None) -> torch.Tensor:
    """Tight box with each coordinate moved by up to `noise` times the box side (no noise without a generator),
    clamped to the image."""
    box = tight_box(mask)
    if g is not None and noise > 0:
        w, h = box[2] - box[0], box[3] - box[1]
        scale = torch.stack([w, h, w, h]) * noise
        box = box + (torch.rand(4, generator=g) * 2 - 1) * scale
    h_img, w_img = mask.shape
    box = torch.stack([box[0].clamp(0, w_img - 1), box[1].clamp(0, h_img - 1), box[2], box[3]])
    box[2] = box[2].clamp(box[0], w_img - 1)
    box[3] = box[3].clamp(box[1], h_img - 1)
    return box


def _random_pixels(region: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k pixels (x, y) drawn uniformly (with replacement) from a non-empty bool [H, W] region."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    pick = torch.randint(0, len(xs), (k,), generator=g)
    return torch.stack([xs[pick], ys[pick]], dim=1).float()


def sample_points(
    mask: torch.Tensor, num_pos: int, num_neg: int, g: torch.Generator, first: str = "center"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks for one non-empty mask [H, W] bool -> coords [P, 2] (x, y), labels [P] (1 pos, 0 neg).

    The first positive is, with `first="center"`, the interior point farthest from the boundary (ties: first in
    row-major order), with `first="uniform"` a random pixel inside (Meta's training clicks); the other positives
    are uniform inside, the negatives uniform outside (skipped when the mask covers the image).
    """
    if first == "uniform":
        coords = [_random_pixels(mask, num_pos, g)]
    else:
        from scipy.ndimage import distance_transform_edt  # only here: predict never needs scipy

        dist = distance_transform_edt(np.pad(mask.numpy(), 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        coords = [torch.tensor([[float(x), float(y)]])]
        if num_pos > 1:
            coords.append(_random_pixels(mask, num_pos - 1, g))
    labels = [1] * num_pos
    outside = ~mask
    if num_neg > 0 and outside.any():
        coords.append(_random_pixels(outside, num_neg, g))
        labels += [0] * num_neg
    return torch.cat(coords), torch.tensor(labels, dtype=torch.long)


def pad_points(coords: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object clicks (coords [P_k, 2], labels [P_k]) -> point_coords [N, P, 2] and point_labels [N, P], padded
    to the most clicks with label -1."""
    n, p = len(coords), max([len(c) for c in coords], default=0)
    point_coords = torch.zeros(n, p, 2)
    point_labels = torch.full((n, p), -1, dtype=torch.long)
    for k in range(n):
        point_coords[k, : len(coords[k])] = coords[k]
        point_labels[k, : len(labels[k])] = labels[k]
    return point_coords, point_labels


def choose_kind(cfg: PromptsConfig, prompt_type: str, g: torch.Generator) -> int:
    if prompt_type != "mixed":
        return _KINDS[prompt_type]
    r = float(torch.rand((), generator=g))
    if r < cfg.mask_prob:
        return PROMPT_MASK
    return PROMPT_BOX if r < cfg.mask_prob + cfg.box_prob else PROMPT_POINT


def make_prompts(
    prompt_masks: torch.Tensor,
    cfg: PromptsConfig,
    g: torch.Generator,
    train: bool,
    prompt_type: str | None = None,
) -> Prompts:
    """Prompts for N objects from their masks on their prompt frames [N, H, W] bool (each non-empty).

    In training the box is jittered by `box_noise` and the first click follows `first_point`; at validation the
    caller passes a generator seeded by the sample index so prompts are the same every epoch, boxes are tight and
    the first click is the mask's centre (as Meta's evaluation clicks).
    """
    prompt_type = prompt_type or cfg.type
    first_point = cfg.first_point if train else "center"
    n, h, w = prompt_masks.shape
    kinds, boxes, coords, labels = [], [], [], []
    for k in range(n):
        mask = prompt_masks[k]
        kind = choose_kind(cfg, prompt_type, g)
        kinds.append(kind)
        boxes.append(noisy_box(mask, cfg.box_noise, g if train else None))
        if kind == PROMPT_POINT:
            c, lab = sample_points(mask, cfg.num_pos_points, cfg.num_neg_points, g, first_point)
        else:
            c, lab = torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)
        coords.append(c)
        labels.append(lab)
    point_coords, point_labels = pad_points(coords, labels)
    return Prompts(
        kind=torch.tensor(kinds, dtype=torch.long),
        point_coords=point_coords,
        point_labels=point_labels,
        boxes=torch.stack(boxes) if n else torch.zeros(0, 4),
        masks=prompt_masks.float(),
    )
