"""The video pass over `SAM2Base`: one forward for training, validation and predict.

`run_video` tracks every prompted object of a `VideoBatch` with `VideoTracker` (model/tracker.py): each object from
its prompt frame, with the training schedule the batch carries (extra conditioning frames, correction clicks), all
objects of the batch on one object axis, and places the results on the padded [B, T, N] grid (`VideoOutput`).
Objects share nothing but the clip's backbone features, so the pass splits exactly into groups of objects, each
run on the features of `encode_clip` (`model/object_chunks.py`, `train/chunked.py`).

Over 400 lines because the plan, the run and the assembly of one pass share their private types (`_VideoPlan`,
`_Schedule`, `_ChunkedFrames`), which no other module should see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sam2train.batch import PROMPT_BOX, PROMPT_NONE, PROMPT_POINT, Prompts, VideoBatch, map_fields
from sam2train.data.frames import normalize
from sam2train.model.corrections import Clicker, prompts_from_ground_truth
from sam2train.model.encoder import FrameFeatures, encode_frames
from sam2train.model.feature_cache import frame_keys
from sam2train.model.prompt_groups import group_prompts
from sam2train.model.tracker import NO_OBJ_LOGIT, FrameOutput, VideoTracker

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.config import PromptsConfig
    from sam2train.model.feature_cache import CachedEncoder

__all__ = [
    "NO_OBJ_LOGIT",
    "FrameFeatures",
    "FrameOutput",
    "VideoOutput",
    "VideoTracker",
    "encode_clip",
    "encode_frames",
    "active_entries",
    "group_prompts",
    "run_video",
    "tracked_objects",
]


@dataclass
class VideoOutput:
    """Predictions for a VideoBatch (B clips, T frames, N objects; S = image_size, h = w = S / 4, M = 3,
    K = 1 + correction clicks of the most corrected frame).

    mask_logits:         [B, T, N, S, S] the kept mask, low-res logits upsampled bilinearly to the input size
    low_res_logits:      [B, T, N, h, w]
    multimask_logits:    [B, T, N, M, h, w] all candidates (single-mask outputs repeated M times)
    iou_pred:            [B, T, N, M] predicted IoU per candidate
    is_multimask:        [B, T, N] bool, where the candidates are distinct
    object_score_logits: [B, T, N]
    step_multimask_logits: [B, T, N, K, M, h, w], step_iou_pred [B, T, N, K, M], step_object_score_logits
                         [B, T, N, K], step_valid [B, T, N, K]: every prompting step of every frame (the last
                         valid step is the kept result), which the official loss supervises
    tracked:             [B, N] bool; untracked (padded) objects hold NO_OBJ_LOGIT logits and 0 IoU
    active:              [B, T, N] bool, tracked and at or after the object's prompt frame: the entries that
                         have a prediction (earlier frames hold NO_OBJ_LOGIT)
    """

    mask_logits: torch.Tensor
    low_res_logits: torch.Tensor
    multimask_logits: torch.Tensor
    iou_pred: torch.Tensor
    is_multimask: torch.Tensor
    object_score_logits: torch.Tensor
    step_multimask_logits: torch.Tensor
    step_iou_pred: torch.Tensor
    step_object_score_logits: torch.Tensor
    step_valid: torch.Tensor
    tracked: torch.Tensor
    active: torch.Tensor


def _index_prompts(prompts: Prompts, *index: torch.Tensor) -> Prompts:
    return map_fields(lambda x: x[index], prompts)


def tracked_objects(batch: VideoBatch) -> torch.Tensor:
    """[B, N] bool: objects that are valid on the first frame. A valid object without a prompt is an error."""
    kind = batch.prompts.kind
    tracked = batch.valid[:, 0] & (batch.object_ids >= 0)
    missing = tracked & (kind == PROMPT_NONE)
    if bool(missing.any()):
        b, n = (int(i) for i in missing.nonzero()[0])
        raise ValueError(f"video {batch.video_names[b]}: object {int(batch.object_ids[b, n])} has no prompt")
    return tracked & (kind != PROMPT_NONE)


class _ChunkedFrames:
    """Backbone features of a [B, T] clip, encoded `chunk` frames (per clip) at a time and dropped once
    tracking has moved past them, so the encoder's activations and features stay bounded for long videos."""

    def __init__(
        self,
        model: SAM2Base,
        batch: VideoBatch,
        chunk: int | None,
        frozen: bool | None,
        encoder: CachedEncoder | None = None,
        features: FrameFeatures | None = None,
    ) -> None:
        self.model, self.batch, self.images, self.frozen = model, batch, batch.images, frozen
        self.encoder = encoder
        images = batch.images
        self.t = images.shape[1]
        self.chunk = self.t if chunk is None or features is not None else max(1, chunk)
        self.start, self.frames = -1, None
        if features is not None:  # the whole clip, encoded before (`encode_clip`)
            self.start, self.length, self.frames = 0, self.t, features

    def at(self, t: int, obj_b: torch.Tensor) -> tuple[FrameFeatures, torch.Tensor]:
        """Features holding frame `t` of every clip, and each object's index in them ([n] long)."""
        start = (t // self.chunk) * self.chunk
        if start != self.start:
            self.frames = None  # free the previous chunk before encoding the next
            stop = min(start + self.chunk, self.t)
            self.frames = self.encode(start, stop)
            self.start, self.length = start, stop - start
        return self.frames, obj_b * self.length + (t - start)

    def encode(self, start: int, stop: int) -> FrameFeatures:
        """Features of frames start..stop-1 of every clip (clip-major: index b * (stop - start) + t - start)."""
        clip = self.images[:, start:stop].flatten(0, 1)
        if clip.dtype == torch.uint8:  # loader clips stay uint8 until here
            clip = normalize(clip)
        if self.encoder is not None:
            return self.encoder.encode(clip, frame_keys(self.batch, start, stop))
        return encode_frames(self.model, clip, self.frozen)


def encode_clip(
    model: SAM2Base,
    batch: VideoBatch,
    frozen: bool | None = None,
    encoder: CachedEncoder | None = None,
) -> FrameFeatures:
    """Backbone features of every frame of the batch (B * T frames, clip-major), as `run_video` computes them
    without `chunk`, to hand to several `run_video(..., features=)` calls (object groups)."""
    return _ChunkedFrames(model, batch, None, frozen, encoder).encode(0, batch.shape[1])


@dataclass(frozen=True)
class _Schedule:
    """When a tracker's objects are prompted: `start` (their prompt frame), the conditioning frames `cond`
    (start first), the frames getting correction clicks `correct`."""

    start: int
    cond: tuple[int, ...]
    correct: tuple[int, ...]

    def order(self, num_frames: int) -> list[int]:
        """Processing order: conditioning frames first (as SAM2Train), then the others forward in time."""
        return list(self.cond) + [t for t in range(self.start, num_frames) if t not in self.cond]


def _frame_list(row: torch.Tensor | None, b: int) -> list[int]:
    return [] if row is None else [int(x) for x in row[b].tolist() if x >= 0]


def _schedules(
    batch: VideoBatch, obj_b: torch.Tensor, obj_n: torch.Tensor, kinds: torch.Tensor, corrections: bool
) -> list[_Schedule]:
    """The schedule of each tracked object (objects listed by obj_b, obj_n; kinds their prompt kinds)."""
    starts = (
        batch.prompt_frames.cpu()[obj_b, obj_n].tolist()
        if batch.prompt_frames is not None
        else [0] * len(obj_b)
    )
    cond_rows = None if batch.cond_frames is None else batch.cond_frames.cpu()
    correct_rows = None if batch.correct_frames is None or not corrections else batch.correct_frames.cpu()
    out = []
    for i, (b, start) in enumerate(zip(obj_b.tolist(), starts)):
        cond = (start, *[c for c in _frame_list(cond_rows, b) if c > start])
        correct: tuple[int, ...] = ()
        if int(kinds[i]) in (PROMPT_BOX, PROMPT_POINT):
            correct = tuple(c for c in _frame_list(correct_rows, b) if c >= start)
        out.append(_Schedule(start, cond, correct))
    return out


@dataclass
class _VideoPlan:
    """Who is tracked, by which tracker, on which frames. O tracked objects, G trackers (objects that share a
    schedule and a pointer time encoding share a tracker: one SAM call per frame for all of them)."""

    tracked: torch.Tensor
    """[B, N] bool (CPU), the objects that are tracked."""
    obj_b: torch.Tensor
    """[O] long (CPU), the clip of each tracked object."""
    obj_n: torch.Tensor
    """[O] long (CPU), its slot on the object axis."""
    prompts: Prompts
    """The tracked objects' prompts, [O, ...] on the batch's device."""
    kinds: torch.Tensor
    """[O] (CPU), their prompt kinds."""
    groups: list[torch.Tensor]
    """G tensors [g] long: the tracked objects (indices into O) of each tracker."""
    schedules: list[_Schedule]
    """G schedules, one per tracker."""
    lengths: list[int]
    """G video lengths, one per tracker (its pointer time encoding)."""

    def events(self, num_frames: int, streaming: bool) -> list[tuple[int, int]]:
        """The (tracker, frame) calls in processing order. Streaming visits frames in time order across trackers
        (so chunks of encoded frames can be dropped); otherwise each tracker runs its own order in turn."""
        events = [
            ((frame, k) if streaming else (k, pos), k, frame)
            for k, schedule in enumerate(self.schedules)
            for pos, frame in enumerate(schedule.order(num_frames))
        ]
        return [(k, frame) for _, k, frame in sorted(events)]


def active_entries(batch: VideoBatch) -> torch.Tensor:
    """[B, T, N] bool (CPU): the entries `run_video` predicts (`VideoOutput.active`), known before the pass:
    tracked objects from their prompt frame on."""
    t = batch.shape[1]
    tracked = tracked_objects(batch).cpu()
    starts = torch.zeros(tracked.shape, dtype=torch.long)
    if batch.prompt_frames is not None:
        starts = batch.prompt_frames.cpu().long()
    return tracked[:, None] & (torch.arange(t)[None, :, None] >= starts[:, None])


def _plan(
    model: SAM2Base, batch: VideoBatch, corrections: bool, object_chunk: int | None = None
) -> _VideoPlan:
    """The tracked objects of `batch`, their schedules (correction clicks only when `corrections`) and their
    grouping into trackers, each of at most `object_chunk` objects."""
    t = batch.shape[1]
    dev = batch.images.device
    tracked = tracked_objects(batch).cpu()
    obj_b, obj_n = tracked.nonzero(as_tuple=True)
    prompts = _index_prompts(batch.prompts, obj_b.to(dev), obj_n.to(dev))
    kinds = prompts.kind.cpu()
    schedules = _schedules(batch, obj_b, obj_n, kinds, corrections)
    # Objects whose videos give the same pointer time encoding and that share a schedule share a tracker.
    lengths = [max(int(batch.num_video_frames[i]), t) for i in obj_b.tolist()]
    cap = model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 1
    by_key: dict[tuple, list[int]] = {}
    for i, length in enumerate(lengths):
        by_key.setdefault((schedules[i], min(length, cap)), []).append(i)
    size = object_chunk or max(len(obj_b), 1)
    keys, groups = [], []
    for key, members in by_key.items():
        for start in range(0, len(members), size):
            keys.append(key)
            groups.append(torch.tensor(members[start : start + size], dtype=torch.long))
    return _VideoPlan(
        tracked=tracked,
        obj_b=obj_b,
        obj_n=obj_n,
        prompts=prompts,
        kinds=kinds,
        groups=groups,
        schedules=[key[0] for key in keys],
        lengths=[max(lengths[i] for i in idx.tolist()) for idx in groups],
    )


def _track_frame(
    plan: _VideoPlan,
    k: int,
    frame: int,
    tracker: VideoTracker,
    frames: _ChunkedFrames,
    generators: list[torch.Generator],
    prompts_cfg: PromptsConfig | None,
) -> FrameOutput:
    """One SAM call of tracker `k` on `frame`: its prompt (from the batch on the prompt frame, from the ground
    truth on an extra conditioning frame) or a tracking step, with correction clicks where scheduled."""
    batch = frames.batch
    idx, schedule = plan.groups[k], plan.schedules[k]
    obj_b, obj_n = plan.obj_b[idx], plan.obj_n[idx]
    feats, where = frames.at(frame, obj_b)
    object_generators = [generators[i] for i in idx.tolist()]
    gt = None
    if frame in schedule.correct or (frame != schedule.start and frame in schedule.cond):
        dev = batch.images.device
        gt = batch.masks[obj_b.to(dev), frame, obj_n.to(dev)] > 0.5
    clicker = None
    if frame in schedule.correct:
        assert prompts_cfg is not None
        clicker = Clicker(
            prompts_cfg.num_correction_points, prompts_cfg.correction_from_gt_prob, object_generators
        )
    if frame == schedule.start:
        object_prompts = _index_prompts(plan.prompts, idx.to(plan.prompts.kind.device))
        return tracker.prompt(frame, feats, object_prompts, where, gt=gt, clicker=clicker)
    if frame in schedule.cond:
        noise = prompts_cfg.box_noise if prompts_cfg is not None else 0.1
        extra = prompts_from_ground_truth(plan.kinds[idx], gt, object_generators, noise)
        return tracker.prompt(frame, feats, extra, where, gt=gt, clicker=clicker)
    as_cond = clicker is not None and prompts_cfg is not None and prompts_cfg.corrections_as_cond
    return tracker.step(frame, feats, where, gt=gt, clicker=clicker, as_cond=as_cond)


def run_video(
    model: SAM2Base,
    batch: VideoBatch,
    *,
    bptt: bool = True,
    mask_prompt_passthrough: bool = True,
    frozen_image_encoder: bool | None = None,
    chunk: int | None = None,
    prompts_cfg: PromptsConfig | None = None,
    memory_from_low_res: bool = True,
    encoder: CachedEncoder | None = None,
    features: FrameFeatures | None = None,
    object_chunk: int | None = None,
) -> VideoOutput:
    """Track every prompted object of `batch` through the clip, all objects of the batch on one object axis.
    In eval mode under no_grad, with first-frame prompts, this matches SAM2VideoPredictor frame by frame.

    Each object is prompted on its prompt frame (`batch.prompt_frames`, default 0) and tracked forward from
    there. The batch's training schedule adds conditioning frames prompted from the ground truth
    (`batch.cond_frames`) and, with `prompts_cfg` (num_correction_points, correction_from_gt_prob,
    corrections_as_cond, box_noise), correction clicks on `batch.correct_frames` for objects prompted with
    points or a box, drawn with a generator per object seeded by its clip's `batch.seeds` and its object id (so
    an object's draws do not depend on which other objects run with it). Objects with the same schedule share one
    tracker (one SAM call per frame).

    `chunk` encodes that many frames per clip at a time (None: the whole clip in one encoder call, the fastest for
    training clips); validation and predict stream long videos with a small chunk. `encoder` (a frozen image
    encoder's feature cache, `model.cache_features`) replaces the image encoder.

    `features` (`encode_clip` of a batch with the same clips) replaces the encoder pass: a batch narrowed to a
    group of objects (`model/object_chunks.py`) then gets the results of those objects in the pass over all.

    `object_chunk` caps the objects of one tracker (one SAM call): with `chunk` (streaming, as validation runs)
    the groups share each encoded frame, so memory is bounded in the number of objects at no encoder cost.
    """
    b, t = batch.shape[:2]
    frames = _ChunkedFrames(model, batch, chunk, frozen_image_encoder, encoder, features)
    plan = _plan(model, batch, corrections=prompts_cfg is not None, object_chunk=object_chunk)
    trackers = [
        VideoTracker(
            model,
            length,
            bptt=bptt,
            mask_prompt_passthrough=mask_prompt_passthrough,
            memory_from_low_res=memory_from_low_res,
        )
        for length in plan.lengths
    ]
    seeds = batch.seeds.tolist() if batch.seeds is not None else list(range(b))
    ids = batch.object_ids.cpu()[plan.obj_b, plan.obj_n].tolist()
    generators = [
        torch.Generator().manual_seed(_object_seed(int(seeds[i]), j))
        for i, j in zip(plan.obj_b.tolist(), ids)
    ]
    results = [
        (k, frame, _track_frame(plan, k, frame, trackers[k], frames, generators, prompts_cfg))
        for k, frame in plan.events(t, streaming=chunk is not None)
    ]
    return _assemble(results, plan, active_entries(batch), model.image_size, batch.images.device)


def _object_seed(clip_seed: int, object_id: int) -> int:
    """The seed of object `object_id` of a clip seeded `clip_seed` (distinct per object, 63 bits)."""
    return (clip_seed * 1_000_003 + object_id) % (1 << 63)


def _assemble(
    results: list[tuple[int, int, FrameOutput]],
    plan: _VideoPlan,
    active: torch.Tensor,
    size: int,
    dev: torch.device,
) -> VideoOutput:
    """Place each tracker's per-frame outputs (tracker, frame, output) on the padded [B, T, N] grid of `active`
    (`active_entries`) on `dev` (untracked entries: NO_OBJ_LOGIT logits, 0 IoU). Without correction clicks
    (K = 1) the step fields are views of the per-frame ones."""
    b, t, n = active.shape
    h = size // 4
    m = results[0][2].multimask_logits.shape[1] if results else 1
    k_max = max((r.step_valid.shape[1] for _, _, r in results), default=1)
    specs = {
        "low_res_logits": ((h, h), NO_OBJ_LOGIT, torch.float32),
        "multimask_logits": ((m, h, h), NO_OBJ_LOGIT, torch.float32),
        "iou_pred": ((m,), 0.0, torch.float32),
        "is_multimask": ((), False, torch.bool),
        "object_score_logits": ((), NO_OBJ_LOGIT, torch.float32),
    }
    if k_max > 1:
        specs.update(
            {
                "step_multimask_logits": ((k_max, m, h, h), NO_OBJ_LOGIT, torch.float32),
                "step_iou_pred": ((k_max, m), 0.0, torch.float32),
                "step_object_score_logits": ((k_max,), NO_OBJ_LOGIT, torch.float32),
                "step_valid": ((k_max,), False, torch.bool),
            }
        )
    grids = {
        name: torch.full((b, t, n, *tail), fill, dtype=dtype, device=dev)
        for name, (tail, fill, dtype) in specs.items()
    }
    for k, frame, out in results:
        out = out.pad_steps(k_max)
        ob, on = plan.obj_b[plan.groups[k]].to(dev), plan.obj_n[plan.groups[k]].to(dev)
        for name, grid in grids.items():
            grid[ob, frame, on] = getattr(out, name).to(grid.dtype)
    if k_max == 1:
        grids.update(
            step_multimask_logits=grids["multimask_logits"][:, :, :, None],
            step_iou_pred=grids["iou_pred"][:, :, :, None],
            step_object_score_logits=grids["object_score_logits"][..., None],
            step_valid=active.to(dev)[..., None],
        )
    low = grids["low_res_logits"]
    up = F.interpolate(low.flatten(0, 2)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return VideoOutput(
        mask_logits=up.view(b, t, n, size, size),
        tracked=plan.tracked.to(dev),
        active=active.to(dev),
        **grids,
    )
