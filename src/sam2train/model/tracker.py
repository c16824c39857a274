"""SAM 2's per-frame tracking step over `SAM2Base`, for many objects at once.

`VideoTracker` tracks a set of objects through one video (or several clips at once) with SAM 2's memory bank,
on the per-frame features of `model/encoder.py`: `prompt` on each conditioning frame (with correction clicks when
asked), `step` on the others. Only `SAM2Base`'s per-frame primitives are called
(`_prepare_memory_conditioned_features`, `_forward_sam_heads`, `_use_mask_as_output`, `_encode_new_memory`,
pinned by sam2==1.1.0). `model/video.py` unrolls it over a batch.

Choices that decide the numbers (tested against `SAM2VideoPredictor` frame by frame in tests/test_video_pass.py):
- Memory of a prompted frame is encoded from its low-res logits upsampled to the input size, as
  `SAM2VideoPredictor` does, in training too (Meta's `SAM2Train` encodes the exact +-10 mask instead; the two
  differ only for mask prompts, by ~4e-4 in logits; `memory_from_low_res=False` gives Meta's). Training thus sees
  the memory that inference will see.
- In eval mode (`model.eval()`) memory features are stored in bfloat16, as the predictor stores them; in training
  they stay float32 and, with `bptt=True`, keep their graph so later frames' losses reach the memory modules.
- Objects are grouped by prompt shape on a prompted frame (mask; N points, a box counting as two points) because
  SAM 2's multimask decision depends on the number of points; tracking frames run all objects in one SAM call.
- Untracked (padded) objects get `NO_OBJ_LOGIT` (-1024, SAM 2's score for absent objects) as mask and object-score
  logits and 0 as predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sam2train.batch import Prompts
from sam2train.model.corrections import Clicker
from sam2train.model.encoder import FrameFeatures
from sam2train.model.frame_output import NO_OBJ_LOGIT, FrameOutput
from sam2train.model.prompt_groups import group_prompts

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

__all__ = ["NO_OBJ_LOGIT", "FrameOutput", "VideoTracker"]


@dataclass
class _Decoded:
    """SAM heads' result for n objects: the FrameOutput plus what memory needs.

    high_res_masks: [n, 1, S, S] the kept mask upsampled; obj_ptr: [n, C]; object_score_logits: [n, 1]
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
            high_res_masks=torch.cat([p.high_res_masks for p in parts])[inverse],
            obj_ptr=torch.cat([p.obj_ptr for p in parts])[inverse],
            object_score_logits=torch.cat([p.object_score_logits for p in parts])[inverse],
        )


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
    """Tracks n objects through one video with SAM 2's memory: `prompt` on each conditioning frame, then `step`
    frame by frame.

    Objects may come from different clips (`frame_index` picks each object's frame in the `FrameFeatures`), but
    share `num_frames`, the source video's length, which scales SAM 2's object-pointer time encoding.
    Memory is bounded: after each step only the non-prompted frames that the next step can attend to are kept
    (the last `num_maskmem` memories, the last `max_obj_ptrs_in_encoder` pointers), so long videos stream.
    `memory_from_low_res` encodes a prompted frame's memory from its low-res logits upsampled, as
    SAM2VideoPredictor does (default); False uses the heads' own high-res mask, as Meta's `SAM2Train` does.
    The memories' positional encoding, the same for every frame and object, is stored once (as the predictor
    does); `offload` keeps the memory features in host memory, moved to the device as each step attends to them
    (the predictor's `offload_state_to_cpu`).
    """

    def __init__(
        self,
        model: SAM2Base,
        num_frames: int,
        *,
        bptt: bool = True,
        mask_prompt_passthrough: bool = True,
        memory_from_low_res: bool = True,
        offload: bool = False,
    ) -> None:
        self.model = model
        # The pointer time encoding divides by min(num_frames, max_obj_ptrs_in_encoder) - 1.
        self.num_frames = max(int(num_frames), 2)
        self.bptt = bptt
        self.mask_prompt_passthrough = mask_prompt_passthrough
        self.memory_from_low_res = memory_from_low_res
        self.offload = offload
        self._pos_enc: list[torch.Tensor] | None = None  # one object's memory positional encoding, per level
        self.memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.num_objects = 0
        _ensure_rope_trainable(model)

    @property
    def num_multimask(self) -> int:
        m = self.model
        return m.sam_mask_decoder.num_multimask_outputs if m.multimask_output_in_sam else 1

    def prompt(
        self,
        frame_idx: int,
        frames: FrameFeatures,
        prompts: Prompts,
        frame_index: torch.Tensor | None = None,
        *,
        gt: torch.Tensor | None = None,
        clicker: Clicker | None = None,
    ) -> FrameOutput:
        """Segment a conditioning frame from prompts (leading object axis, n objects) and store it as
        conditioning memory. `frame_index` [n] (default all 0) picks each object's frame in `frames`.
        With a `clicker` (and the frame's ground truth gt [n, S, S] bool), objects prompted with points or a box
        get correction clicks, every step kept in the output's step axes."""
        n = self.num_objects = prompts.kind.numel()
        frame_index = torch.zeros(n, dtype=torch.long) if frame_index is None else frame_index.cpu()
        groups = group_prompts(prompts, self.model.image_size)
        parts = []
        for g in groups:
            feats, pos = frames.gather(frame_index[g.index])
            high_res = self._high_res(feats, frames.sizes)
            if g.mask_inputs is not None and self.mask_prompt_passthrough:
                parts.append(self._passthrough(feats, frames.sizes, high_res, g.mask_inputs))
                continue
            pix = self._conditioned(frame_idx, True, feats, pos, frames.sizes)
            decoded = self._heads(pix, high_res, g.point_inputs, g.mask_inputs, True)
            if clicker is not None and g.point_inputs is not None:
                assert gt is not None, "correction clicks need the ground truth"
                decoded = self._correct(
                    decoded, pix, high_res, g.point_inputs, True, gt[g.index], clicker.subset(g.index)
                )
            parts.append(decoded)
        decoded = _Decoded.merge(parts, torch.cat([g.index for g in groups]))
        if self.memory_from_low_res:
            size = (self.model.image_size, self.model.image_size)
            low = decoded.out.low_res_logits[:, None]
            decoded.high_res_masks = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        feats, _ = frames.gather(frame_index)
        self._remember("cond_frame_outputs", frame_idx, feats, frames.sizes, decoded, True)
        return decoded.out

    def step(
        self,
        frame_idx: int,
        frames: FrameFeatures,
        frame_index: torch.Tensor | None = None,
        *,
        gt: torch.Tensor | None = None,
        clicker: Clicker | None = None,
        as_cond: bool = False,
    ) -> FrameOutput:
        """Track all objects into frame `frame_idx` and add it to memory. With a `clicker` (and gt [n, S, S]
        bool) the frame gets correction clicks and, with `as_cond`, becomes conditioning memory."""
        if not self.memory["cond_frame_outputs"]:
            raise RuntimeError("VideoTracker.step before prompt: no prompted frame in memory")
        n = self.num_objects
        frame_index = torch.zeros(n, dtype=torch.long) if frame_index is None else frame_index.cpu()
        feats, pos = frames.gather(frame_index)
        high_res = self._high_res(feats, frames.sizes)
        pix = self._conditioned(frame_idx, False, feats, pos, frames.sizes)
        decoded = self._heads(pix, high_res, None, None, False)
        if clicker is not None:
            assert gt is not None, "correction clicks need the ground truth"
            decoded = self._correct(decoded, pix, high_res, None, False, gt, clicker)
        key = "cond_frame_outputs" if as_cond else "non_cond_frame_outputs"
        self._remember(key, frame_idx, feats, frames.sizes, decoded, clicker is not None)
        self._forget(frame_idx)
        return decoded.out

    @staticmethod
    def _high_res(feats: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor] | None:
        n = feats[-1].shape[1]
        return [x.permute(1, 2, 0).view(n, x.shape[2], *s) for x, s in zip(feats[:-1], sizes[:-1])] or None

    def _conditioned(
        self,
        frame_idx: int,
        is_cond: bool,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """The frame's lowest-resolution features conditioned on memory [n, C, h, w] (SAM 2's rule: an initial
        conditioning frame only gets the no-memory embedding)."""
        return self.model._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=is_cond,
            current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:],
            feat_sizes=sizes[-1:],
            output_dict=self.memory,
            num_frames=self.num_frames,
        )

    def _passthrough(
        self,
        feats: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        high_res: list[torch.Tensor] | None,
        mask_inputs: torch.Tensor,
    ) -> _Decoded:
        """The mask prompt itself as the output (SAM 2's `use_mask_input_as_output_without_sam`)."""
        n = feats[-1].shape[1]
        pix = feats[-1].permute(1, 2, 0).view(n, self.model.hidden_dim, *sizes[-1])
        return self._pack(self.model._use_mask_as_output(pix, high_res, mask_inputs), False)

    def _heads(
        self,
        pix: torch.Tensor,
        high_res: list[torch.Tensor] | None,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        is_cond: bool,
    ) -> _Decoded:
        """One call of SAM's prompt encoder and mask decoder on memory-conditioned features."""
        multimask = self.model._use_multimask(is_cond, point_inputs)
        sam = self.model._forward_sam_heads(
            backbone_features=pix,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            high_res_features=high_res,
            multimask_output=multimask,
        )
        return self._pack(sam, multimask)

    def _correct(
        self,
        decoded: _Decoded,
        pix: torch.Tensor,
        high_res: list[torch.Tensor] | None,
        point_inputs: dict[str, torch.Tensor] | None,
        is_cond: bool,
        gt: torch.Tensor,
        clicker: Clicker,
    ) -> _Decoded:
        """Add `clicker.num_points` correction clicks one after another, each from the error region of the
        current mask, feeding the previous low-res logits back as the mask input (Meta's iterative sampling)."""
        steps = [decoded.out]
        for _ in range(clicker.num_points):
            coords, labels = clicker.next_clicks(gt, decoded.high_res_masks)
            if point_inputs is None:
                point_inputs = {"point_coords": coords, "point_labels": labels}
            else:
                point_inputs = {
                    "point_coords": torch.cat([point_inputs["point_coords"], coords], dim=1),
                    "point_labels": torch.cat([point_inputs["point_labels"], labels], dim=1),
                }
            decoded = self._heads(pix, high_res, point_inputs, decoded.out.low_res_logits[:, None], is_cond)
            steps.append(decoded.out)
        decoded.out = FrameOutput.stack_steps(steps)
        return decoded

    def _pack(self, sam: tuple, multimask: bool) -> _Decoded:
        low_multi, _, ious, low, high, obj_ptr, scores = sam
        n, m = low.shape[0], self.num_multimask
        multi = low_multi.expand(-1, m, -1, -1) if low_multi.shape[1] == 1 else low_multi
        iou = ious.expand(-1, m) if ious.shape[1] == 1 else ious
        out = FrameOutput(
            low_res_logits=low[:, 0],
            multimask_logits=multi,
            iou_pred=iou,
            is_multimask=torch.full((n,), multimask and m > 1, dtype=torch.bool, device=low.device),
            object_score_logits=scores[:, 0],
            step_multimask_logits=multi[:, None],
            step_iou_pred=iou[:, None],
            step_object_score_logits=scores,
            step_valid=torch.ones(n, 1, dtype=torch.bool, device=low.device),
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
            if self.offload:
                features = features.to("cpu", non_blocking=True)
            pos_enc = self._shared_pos_enc(pos_enc)
        if not self.bptt:
            obj_ptr = obj_ptr.detach()
        entry = {"maskmem_features": features, "maskmem_pos_enc": pos_enc, "obj_ptr": obj_ptr}
        self.memory[key][frame_idx] = entry

    def _shared_pos_enc(self, pos_enc: list[torch.Tensor]) -> list[torch.Tensor]:
        """`pos_enc` (per level [n, C, h, w], a sine encoding of the shape alone, never trained) as views of one
        stored copy for a single object, instead of a new copy per frame and object."""
        stored = self._pos_enc
        if stored is None or [(x.shape[1:], x.dtype) for x in stored] != [
            (x.shape[1:], x.dtype) for x in pos_enc
        ]:
            stored = self._pos_enc = [x[:1].clone() for x in pos_enc]
        return [x.expand(p.shape[0], -1, -1, -1) for x, p in zip(stored, pos_enc)]

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
