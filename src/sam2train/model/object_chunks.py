"""Groups of objects for object-chunked training (`model.object_chunk`, run by `train/chunked.py`).

In SAM 2 the objects of a clip share only its frames' backbone features: a batch narrowed to some of its objects
(same clips, same images, fewer object slots) gives, with the features of the whole batch (`encode_clip`), those
objects' results of the pass over all of them (`run_video(narrowed, features=)`). What the losses divide by is
known before the pass (`active_entries`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sam2train.batch import VideoBatch, map_fields
from sam2train.model.video import active_entries, tracked_objects

__all__ = ["active_entries", "narrow_to_objects", "object_groups"]


def object_groups(batch: VideoBatch, size: int) -> list[torch.Tensor]:
    """The tracked objects of `batch` in groups of at most `size`, in (clip, slot) order (a group may span
    clips): per group its slots [B, G] long (CPU), -1 padded, for `narrow_to_objects`. At least one group."""
    tracked = tracked_objects(batch).cpu()
    obj_b, obj_n = tracked.nonzero(as_tuple=True)
    b = tracked.shape[0]
    groups = []
    for start in range(0, max(len(obj_b), 1), size):
        members_b, members_n = obj_b[start : start + size], obj_n[start : start + size]
        per_clip = [members_n[members_b == i] for i in range(b)]
        width = max((len(s) for s in per_clip), default=0)
        slots = torch.full((b, max(width, 1)), -1, dtype=torch.long)
        for i, s in enumerate(per_clip):
            slots[i, : len(s)] = s
        groups.append(slots)
    return groups


def narrow_to_objects(batch: VideoBatch, slots: torch.Tensor) -> VideoBatch:
    """`batch` with only the objects in `slots` [B, G] long (-1: a padded slot: not valid, object id -1): the same
    clips (images, void pixels, schedule and seeds are the batch's own tensors, not copies), masks [B, T, G, H, W],
    valid [B, T, G], prompts, object ids and prompt frames of those objects."""
    dev = batch.masks.device
    pad = (slots < 0).to(dev)
    index = slots.clamp(min=0).to(dev)
    rows = torch.arange(slots.shape[0], device=dev)[:, None]

    def pick(x: torch.Tensor) -> torch.Tensor:  # [B, N, ...] -> [B, G, ...]
        return x[rows.to(x.device), index.to(x.device)]

    valid = pick(batch.valid.transpose(1, 2)).transpose(1, 2) & ~pad[:, None]
    return replace(
        batch,
        masks=pick(batch.masks.transpose(1, 2)).transpose(1, 2).contiguous(),
        valid=valid,
        prompts=map_fields(pick, batch.prompts),
        object_ids=pick(batch.object_ids).masked_fill(pad.to(batch.object_ids.device), -1),
        prompt_frames=None if batch.prompt_frames is None else pick(batch.prompt_frames),
    )
