"""Objects grouped by prompt shape for SAM 2's prompt encoder: one SAM call per group on a prompted frame.

SAM 2's multimask decision depends on the number of points, so objects prompted with masks form one group and
objects prompted with points (a box counting as two points) one group per point count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts


@dataclass
class PromptGroup:
    """Objects sharing one SAM call on the prompted frame: `index` [g] in the tracker's object axis, and either
    point_inputs (point_coords [g, P, 2] in input pixels, point_labels [g, P] int32) or mask_inputs [g, 1, S, S]."""

    index: torch.Tensor
    point_inputs: dict[str, torch.Tensor] | None
    mask_inputs: torch.Tensor | None


def _object_points(prompts: Prompts, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    kind = int(prompts.kind[i])
    if kind == PROMPT_BOX:
        labels = torch.tensor([2, 3], dtype=torch.int32, device=prompts.boxes.device)
        return prompts.boxes[i].reshape(2, 2).float(), labels
    keep = prompts.point_labels[i] != -1
    if not bool(keep.any()):
        raise ValueError(f"object {i} has a point prompt without any point (all labels are -1)")
    return prompts.point_coords[i][keep].float(), prompts.point_labels[i][keep].to(torch.int32)


def _mask_input(mask: torch.Tensor, size: int) -> torch.Tensor:
    """[H, W] 0/1 -> [1, 1, S, S] float, resized as the predictor does (bilinear, antialias, >= 0.5)."""
    m = mask.float()[None, None]
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def group_prompts(prompts: Prompts, image_size: int) -> list[PromptGroup]:
    """Split objects (prompts with a leading object axis) into groups that can share one SAM call: mask prompts,
    and point prompts by number of points (a box is two points with labels 2 and 3; -1 padding dropped)."""
    keys: dict[int, list[int]] = {}  # -1: mask, P: P points
    points: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, kind in enumerate(prompts.kind.tolist()):
        if kind == PROMPT_MASK:
            keys.setdefault(-1, []).append(i)
        elif kind in (PROMPT_BOX, PROMPT_POINT):
            points[i] = _object_points(prompts, i)
            keys.setdefault(points[i][1].numel(), []).append(i)
        else:
            raise ValueError(f"object {i} has no prompt (kind {kind}); padded objects must not be tracked")
    groups = []
    for key, members in keys.items():
        index = torch.tensor(members, dtype=torch.long)
        if key == -1:
            masks = torch.cat([_mask_input(prompts.masks[i], image_size) for i in members])
            groups.append(PromptGroup(index, None, masks))
        else:
            coords = torch.stack([points[i][0] for i in members])
            labels = torch.stack([points[i][1] for i in members])
            groups.append(PromptGroup(index, {"point_coords": coords, "point_labels": labels}, None))
    return groups
