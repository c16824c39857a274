"""Typed samples and batches, with the shapes written down, and the collate that pads objects.

Shapes use B batch, T frames, N objects (padded to the batch's largest), P prompt points, H = W = image_size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

import torch

D = TypeVar("D")


def map_fields(fn: Callable[..., Any], obj: D, *others: D) -> D:
    """A new dataclass of `obj`'s type whose every field is `fn(obj.field, *(o.field for o in others))`, going
    into nested dataclass fields (a VideoBatch's Prompts) field by field. E.g. `map_fields(lambda x: x[i], p)`
    indexes every field of `p`; `map_fields(lambda *xs: torch.cat(xs), *parts)` concatenates parts."""

    def one(name: str) -> Any:
        value, rest = getattr(obj, name), [getattr(o, name) for o in others]
        if is_dataclass(value) and not isinstance(value, type):
            return map_fields(fn, value, *rest)
        return fn(value, *rest)

    return type(obj)(**{f.name: one(f.name) for f in fields(obj)})  # type: ignore[arg-type]


# Prompt kinds per object on the prompted (first) frame.
PROMPT_NONE, PROMPT_MASK, PROMPT_BOX, PROMPT_POINT = -1, 0, 1, 2
PROMPT_NAMES = {PROMPT_MASK: "mask", PROMPT_BOX: "box", PROMPT_POINT: "point"}


@dataclass
class Prompts:
    """First-frame prompts of one clip (N objects) or, batched, of B clips (leading B axis).

    kind:         [N] long, PROMPT_MASK | PROMPT_BOX | PROMPT_POINT (PROMPT_NONE for padding)
    point_coords: [N, P, 2] float, (x, y) in pixels of the square model input (0..image_size)
    point_labels: [N, P] long, 1 positive, 0 negative, -1 padding (unused slot)
    boxes:        [N, 4] float, (x0, y0, x1, y1) in pixels of the model input
    masks:        [N, H, W] float 0/1, the prompt mask at the model input size
    """

    kind: torch.Tensor
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


@dataclass
class VideoSample:
    """One clip with its objects, as the dataset returns it (before batching).

    images:  [T, 3, H, W] uint8 RGB as loaded (the video pass normalises on the device), or float normalised
    masks:   [T, N, H, W] float 0/1 (an object absent in a frame has an empty mask and stays valid)
    ignore:  [T, H, W] bool, void pixels (255 in DAVIS palettes) excluded from the loss
    frame_indices: [T] long, the frames' indices in their video
    object_ids:    [N] long, the objects' ids in the source annotation
    orig_size:     (height, width) of the video's frames
    num_video_frames: length of the whole video (SAM 2 scales pointer time encodings by it)
    """

    images: torch.Tensor
    masks: torch.Tensor
    ignore: torch.Tensor
    prompts: Prompts
    video_name: str
    frame_indices: torch.Tensor
    object_ids: torch.Tensor
    orig_size: tuple[int, int]
    num_video_frames: int
    prompt_frames: torch.Tensor | None = None
    cond_frames: torch.Tensor | None = None
    correct_frames: torch.Tensor | None = None
    seed: int = 0


@dataclass
class VideoBatch:
    """A batch of clips, objects padded to the largest N of the batch.

    images:  [B, T, 3, H, W] uint8 RGB, or float ImageNet-normalised (both accepted by the video pass)
    masks:   [B, T, N, H, W] float 0/1
    valid:   [B, T, N] bool, False for padded objects
    ignore:  [B, T, H, W] bool, void pixels
    prompts: Prompts with a leading B axis (kind [B, N], point_coords [B, N, P, 2], ...)
    video_names: B names; frame_indices [B, T]; object_ids [B, N] (-1 for padding);
    orig_sizes [B, 2] (height, width); num_video_frames [B]
    prompt_frames [B, N] long (0 for padding); cond_frames [B, C] and correct_frames [B, F] long, -1 padded;
    seeds [B] long: the schedule of VideoSample, batched (None: all objects prompted on frame 0, nothing else)
    """

    images: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    ignore: torch.Tensor
    prompts: Prompts
    video_names: list[str]
    frame_indices: torch.Tensor
    object_ids: torch.Tensor
    orig_sizes: torch.Tensor
    num_video_frames: torch.Tensor
    prompt_frames: torch.Tensor | None = None
    cond_frames: torch.Tensor | None = None
    correct_frames: torch.Tensor | None = None
    seeds: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, T, N)."""
        b, t, n = self.masks.shape[:3]
        return b, t, n

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VideoBatch:
        def move(x: Any) -> Any:
            return x.to(device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x

        return map_fields(move, self)

    def pin_memory(self) -> VideoBatch:
        def pin(x: Any) -> Any:
            return x.pin_memory() if isinstance(x, torch.Tensor) else x

        return map_fields(pin, self)


def _pad(t: torch.Tensor, dim: int, size: int, value: float | int | bool) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_full(shape, value)], dim=dim)


def collate_videos(samples: list[VideoSample]) -> VideoBatch:
    """Stack samples into a VideoBatch; objects are padded to the largest N (valid=False), points to the
    largest P (label -1). All clips of a batch must have the same T and image size."""
    lengths = {s.images.shape[0] for s in samples}
    if len(lengths) != 1:
        names = [s.video_name for s in samples]
        raise ValueError(f"clips of one batch must have the same length, got {sorted(lengths)} for {names}")
    n_max = max(s.masks.shape[1] for s in samples)
    p_max = max(s.prompts.point_coords.shape[1] for s in samples)
    masks, valid, kinds, coords, labels, boxes, pmasks, obj_ids = [], [], [], [], [], [], [], []
    for s in samples:
        t, n = s.masks.shape[:2]
        masks.append(_pad(s.masks, 1, n_max, 0.0))
        valid.append(_pad(torch.ones(t, n, dtype=torch.bool), 1, n_max, False))
        p = s.prompts
        kinds.append(_pad(p.kind, 0, n_max, PROMPT_NONE))
        coords.append(_pad(_pad(p.point_coords, 1, p_max, 0.0), 0, n_max, 0.0))
        labels.append(_pad(_pad(p.point_labels, 1, p_max, -1), 0, n_max, -1))
        boxes.append(_pad(p.boxes, 0, n_max, 0.0))
        pmasks.append(_pad(p.masks, 0, n_max, 0.0))
        obj_ids.append(_pad(s.object_ids, 0, n_max, -1))
    return VideoBatch(
        images=torch.stack([s.images for s in samples]),
        masks=torch.stack(masks),
        valid=torch.stack(valid),
        ignore=torch.stack([s.ignore for s in samples]),
        prompts=Prompts(
            kind=torch.stack(kinds),
            point_coords=torch.stack(coords),
            point_labels=torch.stack(labels),
            boxes=torch.stack(boxes),
            masks=torch.stack(pmasks),
        ),
        video_names=[s.video_name for s in samples],
        frame_indices=torch.stack([s.frame_indices for s in samples]),
        object_ids=torch.stack(obj_ids),
        orig_sizes=torch.tensor([list(s.orig_size) for s in samples], dtype=torch.long),
        num_video_frames=torch.tensor([s.num_video_frames for s in samples], dtype=torch.long),
        prompt_frames=torch.stack(
            [_pad(_frames(s.prompt_frames, s.masks.shape[1]), 0, n_max, 0) for s in samples]
        ),
        cond_frames=_stack_padded([s.cond_frames for s in samples]),
        correct_frames=_stack_padded([s.correct_frames for s in samples]),
        seeds=torch.tensor([s.seed for s in samples], dtype=torch.long),
    )


def _frames(t: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long) if t is None else t.long()


def _stack_padded(rows: list[torch.Tensor | None]) -> torch.Tensor:
    """[B, max length] long, -1 padded (a None row is empty)."""
    rows = [torch.zeros(0, dtype=torch.long) if r is None else r.long() for r in rows]
    return torch.stack([_pad(r, 0, max(len(x) for x in rows), -1) for r in rows])


def as_video_batch(
    images: Any, masks: torch.Tensor | None = None, prompts: Prompts | None = None
) -> VideoBatch:
    """A VideoBatch from a VideoBatch, Meta's BatchedVideoDatapoint, or (images, masks, prompts) tensors."""
    if isinstance(images, VideoBatch):
        return images
    if hasattr(images, "obj_to_frame_idx") and hasattr(images, "img_batch"):
        return from_meta_batch(images)
    if masks is None:
        raise ValueError(
            "forward(images, masks, prompts): masks [B,T,N,H,W] are required with a tensor input"
        )
    b, t, n = masks.shape[:3]
    h, w = masks.shape[-2:]
    if prompts is None:
        first = masks[:, 0].float()
        prompts = Prompts(
            kind=torch.full((b, n), PROMPT_MASK, dtype=torch.long, device=masks.device),
            point_coords=masks.new_zeros(b, n, 0, 2),
            point_labels=torch.zeros(b, n, 0, dtype=torch.long, device=masks.device),
            boxes=masks.new_zeros(b, n, 4),
            masks=first,
        )
    dev = masks.device
    return VideoBatch(
        images=images,
        masks=masks.float(),
        valid=torch.ones(b, t, n, dtype=torch.bool, device=dev),
        ignore=torch.zeros(b, t, h, w, dtype=torch.bool, device=dev),
        prompts=prompts,
        video_names=[f"video_{i}" for i in range(b)],
        frame_indices=torch.arange(t, device=dev).expand(b, t),
        object_ids=torch.arange(1, n + 1, device=dev).expand(b, n),
        orig_sizes=torch.tensor([[h, w]] * b, device=dev),
        num_video_frames=torch.full((b,), t, dtype=torch.long, device=dev),
    )


def from_meta_batch(batch: Any) -> VideoBatch:
    """Convert Meta's `BatchedVideoDatapoint` (img_batch [T,B,3,H,W], masks [T,O,H,W], obj_to_frame_idx [T,O,2]
    holding (frame, video) per object) into a VideoBatch prompted with first-frame masks."""
    images = batch.img_batch.transpose(0, 1)  # [B,T,3,H,W]
    b, t = images.shape[:2]
    video_of_obj = batch.obj_to_frame_idx[0, :, 1].long()
    n = int(torch.bincount(video_of_obj, minlength=b).max())
    h, w = batch.masks.shape[-2:]
    masks = batch.masks.new_zeros(b, t, n, h, w, dtype=torch.float)
    valid = torch.zeros(b, t, n, dtype=torch.bool, device=images.device)
    slot = torch.zeros(b, dtype=torch.long)
    for o, v in enumerate(video_of_obj.tolist()):
        masks[v, :, slot[v]] = batch.masks[:, o].float()
        valid[v, :, slot[v]] = True
        slot[v] += 1
    out = as_video_batch(images, masks)
    out.valid = valid
    out.prompts.kind[~valid[:, 0]] = -1
    return out
