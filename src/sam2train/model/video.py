"""The video pass over `SAM2Base`: one forward for training, validation and predict.

`encode_frames` runs the image encoder once over many frames; `VideoTracker` tracks a set of objects through one
video (or several clips at once) with SAM 2's memory bank: `prompt` on the prompted frame, `step` on each later
frame; `run_video` unrolls it over a `VideoBatch`. Only `SAM2Base`'s per-frame primitives are called
(`_prepare_backbone_features`, `_prepare_memory_conditioned_features`, `_forward_sam_heads`, `_use_mask_as_output`,
`_encode_new_memory`, pinned by sam2==1.1.0).

Choices that decide the numbers (see docs/REFERENCE.md, "Matching Meta's predictor"):
- Memory of the prompted frame is encoded from its low-res logits upsampled to the input size, as
  `SAM2VideoPredictor` does, in training too (Meta's `SAM2Train` encodes the exact +-10 mask instead; the two
  differ only for mask prompts, by ~4e-4 in logits). Training thus sees the memory that inference will see.
- In eval mode (`model.eval()`) memory features are stored in bfloat16, as the predictor stores them; in training
  they stay float32 and, with `bptt=True`, keep their graph so later frames' losses reach the memory modules.
- Objects are grouped by prompt shape on the prompted frame (mask; N points, a box counting as two points) because
  SAM 2's multimask decision depends on the number of points; tracking frames run all objects in one SAM call.
- Untracked (padded) objects get `NO_OBJ_LOGIT` (-1024, SAM 2's score for absent objects) as mask and object-score
  logits and 0 as predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sam2train.data.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_NONE, PROMPT_POINT, Prompts, VideoBatch

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

NO_OBJ_LOGIT = -1024.0
"""Logit of padded objects (and of SAM 2's masks when the object score says 'absent')."""


@dataclass
class FrameFeatures:
    """Backbone features of F frames, flattened as SAM 2's per-frame methods take them.

    feats: per level, highest resolution first, [h_l * w_l, F, C_l]
    pos:   per level [h_l * w_l, F, C_l] (sine encodings, identical for every frame)
    sizes: per level (h_l, w_l)
    """

    feats: list[torch.Tensor]
    pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]

    def gather(self, frame_index: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features for n objects, object i on frame `frame_index[i]` ([n] long): per level [HW, n, C].

        Objects on one frame share it through `expand` (no copy); otherwise `index_select` copies once per object.
        """
        n = frame_index.numel()
        pos = [p[:, :1].expand(-1, n, -1) for p in self.pos]
        first = int(frame_index[0])
        if bool((frame_index == first).all()):
            return [f[:, first : first + 1].expand(-1, n, -1) for f in self.feats], pos
        index = frame_index.to(self.feats[0].device)
        return [f.index_select(1, index) for f in self.feats], pos


def encode_frames(model: SAM2Base, images: torch.Tensor, frozen: bool | None = None) -> FrameFeatures:
    """Run the image encoder once over `images` [F, 3, S, S] (normalised) and flatten the features.

    `frozen` (default: no image-encoder parameter requires grad) runs the encoder under no_grad. The high-res
    projections that `forward_image` applies belong to the mask decoder and keep their gradient either way.
    """
    if frozen is None:
        frozen = not any(p.requires_grad for p in model.image_encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        out = model.image_encoder(images)
    fpn = list(out["backbone_fpn"])
    if model.use_high_res_features_in_sam:
        fpn[0] = model.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = model.sam_mask_decoder.conv_s1(fpn[1])
    _, feats, pos, sizes = model._prepare_backbone_features(
        {"backbone_fpn": fpn, "vision_pos_enc": list(out["vision_pos_enc"])}
    )
    return FrameFeatures(feats=feats, pos=pos, sizes=sizes)


@dataclass
class FrameOutput:
    """One frame's result for n tracked objects (h = w = image_size / 4; M multimask outputs, 3 in SAM 2).

    low_res_logits:      [n, h, w] the mask SAM 2 keeps (best predicted IoU among multimask outputs)
    multimask_logits:    [n, M, h, w] all candidates; a single-mask output is repeated M times
    iou_pred:            [n, M] predicted IoU of each candidate (repeated likewise)
    is_multimask:        [n] bool, whether the frame produced M distinct candidates
    object_score_logits: [n] > 0 means the object is present
    """

    low_res_logits: torch.Tensor
    multimask_logits: torch.Tensor
    iou_pred: torch.Tensor
    is_multimask: torch.Tensor
    object_score_logits: torch.Tensor

    @staticmethod
    def merge(parts: list[FrameOutput], order: torch.Tensor) -> FrameOutput:
        """Concatenate per-group outputs (objects `order`, concatenated) back into object order."""
        inverse = torch.argsort(order).to(parts[0].low_res_logits.device)
        return FrameOutput(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts])[inverse] for f in fields(FrameOutput)}
        )


@dataclass
class _Decoded:
    """SAM heads' result for n objects: the FrameOutput plus what memory needs.

    high_res_masks: [n, 1, S, S] the kept mask upsampled (None after a merge); obj_ptr: [n, C];
    object_score_logits: [n, 1]
    """

    out: FrameOutput
    high_res_masks: torch.Tensor | None
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor

    @staticmethod
    def merge(parts: list[_Decoded], order: torch.Tensor) -> _Decoded:
        inverse = torch.argsort(order).to(parts[0].obj_ptr.device)
        return _Decoded(
            out=FrameOutput.merge([p.out for p in parts], order),
            high_res_masks=None,
            obj_ptr=torch.cat([p.obj_ptr for p in parts])[inverse],
            object_score_logits=torch.cat([p.object_score_logits for p in parts])[inverse],
        )


@dataclass
class _PromptGroup:
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


def group_prompts(prompts: Prompts, image_size: int) -> list[_PromptGroup]:
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
            groups.append(_PromptGroup(index, None, masks))
        else:
            coords = torch.stack([points[i][0] for i in members])
            labels = torch.stack([points[i][1] for i in members])
            groups.append(_PromptGroup(index, {"point_coords": coords, "point_labels": labels}, None))
    return groups


def _ensure_rope_trainable(model: torch.nn.Module) -> None:
    """RoPE caches `freqs_cis` on first use; made under inference_mode (e.g. by SAM2VideoPredictor on this model)
    it cannot be saved for backward. Replace such a cache by a normal copy."""
    if torch.is_inference_mode_enabled():
        return
    for module in model.modules():
        cache = getattr(module, "freqs_cis", None)
        if isinstance(cache, torch.Tensor) and cache.is_inference():
            module.freqs_cis = cache.clone()


class VideoTracker:
    """Tracks n objects through one video with SAM 2's memory: `prompt` once, then `step` frame by frame.

    Objects may come from different clips (`frame_index` picks each object's frame in the `FrameFeatures`), but
    share `num_frames`, the source video's length, which scales SAM 2's object-pointer time encoding.
    Memory is bounded: after each step only the non-prompted frames that the next step can attend to are kept
    (the last `num_maskmem` memories, the last `max_obj_ptrs_in_encoder` pointers), so long videos stream.
    """

    def __init__(
        self, model: SAM2Base, num_frames: int, *, bptt: bool = True, mask_prompt_passthrough: bool = True
    ) -> None:
        self.model = model
        # The pointer time encoding divides by min(num_frames, max_obj_ptrs_in_encoder) - 1.
        self.num_frames = max(int(num_frames), 2)
        self.bptt = bptt
        self.mask_prompt_passthrough = mask_prompt_passthrough
        self.memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.num_objects = 0
        _ensure_rope_trainable(model)

    @property
    def num_multimask(self) -> int:
        m = self.model
        return m.sam_mask_decoder.num_multimask_outputs if m.multimask_output_in_sam else 1

    def prompt(
        self, frame_idx: int, frames: FrameFeatures, prompts: Prompts, frame_index: torch.Tensor | None = None
    ) -> FrameOutput:
        """Segment the prompted frame (prompts with a leading object axis, n objects) and store it as the
        conditioning memory. `frame_index` [n] (default all 0) picks each object's frame in `frames`."""
        n = self.num_objects = prompts.kind.numel()
        frame_index = torch.zeros(n, dtype=torch.long) if frame_index is None else frame_index.cpu()
        groups = group_prompts(prompts, self.model.image_size)
        parts = []
        for g in groups:
            feats, pos = frames.gather(frame_index[g.index])
            parts.append(
                self._decode(frame_idx, True, feats, pos, frames.sizes, g.point_inputs, g.mask_inputs)
            )
        decoded = _Decoded.merge(parts, torch.cat([g.index for g in groups]))
        # As the predictor: the prompted frame's memory comes from its low-res logits upsampled to the input.
        size = (self.model.image_size, self.model.image_size)
        low = decoded.out.low_res_logits[:, None]
        decoded.high_res_masks = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        feats, _ = frames.gather(frame_index)
        self._remember("cond_frame_outputs", frame_idx, feats, frames.sizes, decoded, True)
        return decoded.out

    def step(
        self, frame_idx: int, frames: FrameFeatures, frame_index: torch.Tensor | None = None
    ) -> FrameOutput:
        """Track all objects into frame `frame_idx` (after the prompted frame) and add it to memory."""
        if not self.memory["cond_frame_outputs"]:
            raise RuntimeError("VideoTracker.step before prompt: no prompted frame in memory")
        n = self.num_objects
        frame_index = torch.zeros(n, dtype=torch.long) if frame_index is None else frame_index.cpu()
        feats, pos = frames.gather(frame_index)
        decoded = self._decode(frame_idx, False, feats, pos, frames.sizes, None, None)
        self._remember("non_cond_frame_outputs", frame_idx, feats, frames.sizes, decoded, False)
        self._forget(frame_idx)
        return decoded.out

    def _decode(
        self,
        frame_idx: int,
        is_cond: bool,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
    ) -> _Decoded:
        """SAM 2's per-frame segmentation (what `SAM2Base._track_step` does), memory-conditioned unless the mask
        prompt is passed through as the output."""
        model = self.model
        n = feats[-1].shape[1]
        high_res = [
            x.permute(1, 2, 0).view(n, x.shape[2], *s) for x, s in zip(feats[:-1], sizes[:-1])
        ] or None
        if mask_inputs is not None and self.mask_prompt_passthrough:
            pix = feats[-1].permute(1, 2, 0).view(n, model.hidden_dim, *sizes[-1])
            sam = model._use_mask_as_output(pix, high_res, mask_inputs)
            multimask = False
        else:
            pix = model._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_cond,
                current_vision_feats=feats[-1:],
                current_vision_pos_embeds=pos[-1:],
                feat_sizes=sizes[-1:],
                output_dict=self.memory,
                num_frames=self.num_frames,
            )
            multimask = model._use_multimask(is_cond, point_inputs)
            sam = model._forward_sam_heads(
                backbone_features=pix,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res,
                multimask_output=multimask,
            )
        low_multi, _, ious, low, high, obj_ptr, scores = sam
        m = self.num_multimask
        out = FrameOutput(
            low_res_logits=low[:, 0],
            multimask_logits=low_multi.expand(-1, m, -1, -1) if low_multi.shape[1] == 1 else low_multi,
            iou_pred=ious.expand(-1, m) if ious.shape[1] == 1 else ious,
            is_multimask=torch.full((n,), multimask and m > 1, dtype=torch.bool, device=low.device),
            object_score_logits=scores[:, 0],
        )
        return _Decoded(out=out, high_res_masks=high, obj_ptr=obj_ptr, object_score_logits=scores)

    def _remember(
        self,
        key: str,
        frame_idx: int,
        feats: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        decoded: _Decoded,
        is_mask_from_pts: bool,
    ) -> None:
        """Encode the frame's kept masks into memory and store it with the object pointers."""
        model = self.model
        features, pos_enc, obj_ptr = None, None, decoded.obj_ptr
        if model.num_maskmem > 0:
            features, pos_enc = model._encode_new_memory(
                current_vision_feats=feats,
                feat_sizes=sizes,
                pred_masks_high_res=decoded.high_res_masks,
                object_score_logits=decoded.object_score_logits,
                is_mask_from_pts=is_mask_from_pts,
            )
            if not self.bptt:
                features = features.detach()
            if not model.training:
                features = features.to(torch.bfloat16)  # as SAM2VideoPredictor stores memory
        if not self.bptt:
            obj_ptr = obj_ptr.detach()
        entry = {"maskmem_features": features, "maskmem_pos_enc": pos_enc, "obj_ptr": obj_ptr}
        self.memory[key][frame_idx] = entry

    def _forget(self, frame_idx: int) -> None:
        """Drop non-prompted memories that frames after `frame_idx` can no longer attend to."""
        model = self.model
        stride = 1 if model.training else model.memory_temporal_stride_for_eval
        mem_from = frame_idx - stride * (model.num_maskmem - 1)
        ptr_from = frame_idx + 1
        if model.use_obj_ptrs_in_encoder:
            ptr_from = frame_idx + 2 - min(self.num_frames, model.max_obj_ptrs_in_encoder)
        store = self.memory["non_cond_frame_outputs"]
        for t in list(store):
            if t < mem_from and t < ptr_from:
                del store[t]
            elif t < mem_from:
                store[t] = {"maskmem_features": None, "maskmem_pos_enc": None, "obj_ptr": store[t]["obj_ptr"]}
            elif t < ptr_from:
                store[t] = {**store[t], "obj_ptr": None}


@dataclass
class VideoOutput:
    """Predictions for a VideoBatch (B clips, T frames, N objects; S = image_size, h = w = S / 4, M = 3).

    mask_logits:         [B, T, N, S, S] the kept mask, low-res logits upsampled bilinearly to the input size
    low_res_logits:      [B, T, N, h, w]
    multimask_logits:    [B, T, N, M, h, w] all candidates (single-mask outputs repeated M times)
    iou_pred:            [B, T, N, M] predicted IoU per candidate
    is_multimask:        [B, T, N] bool, where the candidates are distinct
    object_score_logits: [B, T, N]
    tracked:             [B, N] bool; untracked (padded) objects hold NO_OBJ_LOGIT logits and 0 IoU
    """

    mask_logits: torch.Tensor
    low_res_logits: torch.Tensor
    multimask_logits: torch.Tensor
    iou_pred: torch.Tensor
    is_multimask: torch.Tensor
    object_score_logits: torch.Tensor
    tracked: torch.Tensor


def _index_prompts(prompts: Prompts, *index: torch.Tensor) -> Prompts:
    return Prompts(**{f.name: getattr(prompts, f.name)[index] for f in fields(Prompts)})


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

    def __init__(self, model: SAM2Base, images: torch.Tensor, chunk: int | None, frozen: bool | None) -> None:
        self.model, self.images, self.frozen = model, images, frozen
        self.t = images.shape[1]
        self.chunk = self.t if chunk is None else max(1, chunk)
        self.start, self.frames = -1, None

    def at(self, t: int, obj_b: torch.Tensor) -> tuple[FrameFeatures, torch.Tensor]:
        """Features holding frame `t` of every clip, and each object's index in them ([n] long)."""
        start = (t // self.chunk) * self.chunk
        if start != self.start:
            self.frames = None  # free the previous chunk before encoding the next
            stop = min(start + self.chunk, self.t)
            clip = self.images[:, start:stop].flatten(0, 1)
            self.frames = encode_frames(self.model, clip, self.frozen)
            self.start, self.length = start, stop - start
        return self.frames, obj_b * self.length + (t - start)


def run_video(
    model: SAM2Base,
    batch: VideoBatch,
    *,
    bptt: bool = True,
    mask_prompt_passthrough: bool = True,
    frozen_image_encoder: bool | None = None,
    chunk: int | None = None,
) -> VideoOutput:
    """Track every prompted object of `batch` from its first frame through the clip; all objects of the batch on
    one object axis. In eval mode under no_grad this matches SAM2VideoPredictor frame by frame.

    `chunk` encodes that many frames per clip at a time (None: the whole clip in one encoder call, the fastest for
    training clips); validation and predict stream long videos with a small chunk.
    """
    b, t, n = batch.shape
    size = model.image_size
    tracked = tracked_objects(batch).cpu()
    obj_b, obj_n = tracked.nonzero(as_tuple=True)
    frames = _ChunkedFrames(model, batch.images, chunk, frozen_image_encoder)
    prompts = _index_prompts(batch.prompts, obj_b.to(batch.images.device), obj_n.to(batch.images.device))
    # Objects whose videos give the same pointer time encoding share a tracker (usually all of them).
    lengths = [max(int(batch.num_video_frames[i]), t) for i in obj_b.tolist()]
    cap = model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 1
    by_key: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_key.setdefault(min(length, cap), []).append(i)
    groups = [torch.tensor(members, dtype=torch.long) for members in by_key.values()]
    trackers = [
        VideoTracker(
            model,
            max(lengths[i] for i in idx.tolist()),
            bptt=bptt,
            mask_prompt_passthrough=mask_prompt_passthrough,
        )
        for idx in groups
    ]
    order = torch.cat(groups) if groups else torch.zeros(0, dtype=torch.long)
    frame_outs: list[FrameOutput] = []
    for i in range(t if groups else 0):
        parts = []
        for idx, tracker in zip(groups, trackers):
            feats, where = frames.at(i, obj_b[idx])
            if i == 0:
                parts.append(
                    tracker.prompt(0, feats, _index_prompts(prompts, idx.to(prompts.kind.device)), where)
                )
            else:
                parts.append(tracker.step(i, feats, where))
        frame_outs.append(FrameOutput.merge(parts, order))
    return _assemble(frame_outs, tracked, obj_b, obj_n, (b, t, n), size, batch.images)


def _assemble(
    frame_outs: list[FrameOutput],
    tracked: torch.Tensor,
    obj_b: torch.Tensor,
    obj_n: torch.Tensor,
    shape: tuple[int, int, int],
    size: int,
    like: torch.Tensor,
) -> VideoOutput:
    """Stack per-frame outputs of the tracked objects over time and place them on the padded [B, T, N] grid."""
    b, t, n = shape
    h = size // 4
    m = frame_outs[0].multimask_logits.shape[1] if frame_outs else 1

    def grid(name: str, tail: tuple[int, ...], fill: float | bool, dtype: torch.dtype) -> torch.Tensor:
        out = torch.full((b, t, n, *tail), fill, dtype=dtype, device=like.device)
        if frame_outs:
            values = torch.stack([getattr(f, name) for f in frame_outs], dim=1)  # [n_tracked, T, ...]
            out.transpose(1, 2)[obj_b.to(like.device), obj_n.to(like.device)] = values.to(dtype)
        return out

    low = grid("low_res_logits", (h, h), NO_OBJ_LOGIT, torch.float32)
    up = F.interpolate(low.flatten(0, 2)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return VideoOutput(
        mask_logits=up.view(b, t, n, size, size),
        low_res_logits=low,
        multimask_logits=grid("multimask_logits", (m, h, h), NO_OBJ_LOGIT, torch.float32),
        iou_pred=grid("iou_pred", (m,), 0.0, torch.float32),
        is_multimask=grid("is_multimask", (), False, torch.bool),
        object_score_logits=grid("object_score_logits", (), NO_OBJ_LOGIT, torch.float32),
        tracked=tracked.to(like.device),
    )
