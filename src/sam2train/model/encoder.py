"""The image encoder's pass over frames: `encode_frames` turns images into the flattened per-frame backbone
features (`FrameFeatures`) that SAM 2's per-frame methods and our tracker take.

It runs in two halves, kept apart for the feature cache (`model/feature_cache.py`), which stores the output of
the first and runs the second on what it read: `run_image_encoder` (the image encoder alone: every feature level
and its positional encodings) and `features_from_backbone` (the mask decoder's high-res projections `conv_s0` /
`conv_s1`, then SAM 2's `_prepare_backbone_features` flattening, pinned by sam2==1.1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sam2train.model.memory_saving import checkpointed_image_encoder, image_encoder_checkpointing_enabled

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


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


def run_image_encoder(
    model: SAM2Base, images: torch.Tensor, frozen: bool | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The image encoder alone over `images` [F, 3, S, S] (normalised): `backbone_fpn` and `vision_pos_enc`,
    per level [F, C, h, w], highest resolution first. The first half of `encode_frames`.

    `frozen` (default: no image-encoder parameter requires grad) runs the encoder under no_grad. A trainable
    encoder in train mode with `model.checkpoint_image_encoder` on runs one checkpointed segment per frame.
    """
    encoder = model.image_encoder
    if frozen is None:
        frozen = not any(p.requires_grad for p in encoder.parameters())
    grad = torch.is_grad_enabled() and not frozen
    with torch.set_grad_enabled(grad):
        if grad and encoder.training and image_encoder_checkpointing_enabled(model):
            out = checkpointed_image_encoder(encoder, images)
        else:
            out = encoder(images)
    return list(out["backbone_fpn"]), list(out["vision_pos_enc"])


def features_from_backbone(
    model: SAM2Base, fpn: list[torch.Tensor], pos: list[torch.Tensor]
) -> FrameFeatures:
    """The second half of `encode_frames`, from per level [F, C, h, w] encoder outputs and encodings: the mask
    decoder's high-res projections `conv_s0` / `conv_s1` (with their gradient when they train; they belong to
    the decoder, as in `forward_image`) and SAM 2's flattening."""
    fpn = list(fpn)
    if model.use_high_res_features_in_sam:
        fpn[0] = model.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = model.sam_mask_decoder.conv_s1(fpn[1])
    _, feats, flat_pos, sizes = model._prepare_backbone_features(
        {"backbone_fpn": fpn, "vision_pos_enc": list(pos)}
    )
    return FrameFeatures(feats=feats, pos=flat_pos, sizes=sizes)


def encode_frames(model: SAM2Base, images: torch.Tensor, frozen: bool | None = None) -> FrameFeatures:
    """Run the image encoder once over `images` [F, 3, S, S] (normalised) and flatten the features.

    `frozen` (default: no image-encoder parameter requires grad) runs the encoder under no_grad. The high-res
    projections that `forward_image` applies belong to the mask decoder and keep their gradient either way.
    """
    return features_from_backbone(model, *run_image_encoder(model, images, frozen))
