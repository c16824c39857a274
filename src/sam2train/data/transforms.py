"""Clip-consistent augmentation, after the resize of `data/frames.py`, which prepares frames and
masks exactly as Meta's `SAM2VideoPredictor` does. Augmentations run after the resize with
torchvision.transforms.v2 on `tv_tensors.Video` / `tv_tensors.Mask` (masks use nearest), drawing every parameter
once per clip from the sample's generator so all frames move together.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from sam2train.config import AugmentConfig


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


class ClipAugment:
    """Augmentations drawn once per clip and applied to every frame: horizontal flip, scale/crop, affine
    (rotation, translation, shear) and colour jitter. Images bilinear, masks and void nearest."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, video: torch.Tensor, masks: torch.Tensor, void: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """video [T,3,S,S] uint8, masks [T,K,S,S] bool, void [T,S,S] bool -> the same, transformed."""
        cfg = self.cfg
        size = video.shape[-1]
        v = tv_tensors.Video(video)
        m = tv_tensors.Mask(masks.to(torch.uint8))
        z = tv_tensors.Mask(void.to(torch.uint8))
        if float(torch.rand((), generator=g)) < cfg.hflip_prob:
            v, m, z = TF.horizontal_flip(v), TF.horizontal_flip(m), TF.horizontal_flip(z)
        if cfg.scale_min < 1.0:
            area = _uniform(g, cfg.scale_min, 1.0)
            side = max(8, round(size * math.sqrt(area)))
            top = int(torch.randint(0, size - side + 1, (1,), generator=g))
            left = int(torch.randint(0, size - side + 1, (1,), generator=g))
            crop = {"top": top, "left": left, "height": side, "width": side, "size": [size, size]}
            v = TF.resized_crop(v, **crop, interpolation=InterpolationMode.BILINEAR, antialias=True)
            m, z = TF.resized_crop(m, **crop), TF.resized_crop(z, **crop)
        if cfg.degrees > 0 or cfg.translate > 0 or cfg.shear > 0:
            params = {
                "angle": _uniform(g, -cfg.degrees, cfg.degrees),
                "translate": [round(_uniform(g, -cfg.translate, cfg.translate) * size) for _ in range(2)],
                "scale": 1.0,
                "shear": [_uniform(g, -cfg.shear, cfg.shear), 0.0],
            }
            v = TF.affine(v, **params, interpolation=InterpolationMode.BILINEAR)
            m, z = TF.affine(m, **params), TF.affine(z, **params)
        v = self._colour(v, g)
        return (
            v.as_subclass(torch.Tensor),
            m.as_subclass(torch.Tensor).bool(),
            z.as_subclass(torch.Tensor).bool(),
        )

    def _colour(self, v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        if cfg.brightness > 0:
            v = TF.adjust_brightness(v, _uniform(g, 1 - cfg.brightness, 1 + cfg.brightness))
        if cfg.contrast > 0:
            v = TF.adjust_contrast(v, _uniform(g, 1 - cfg.contrast, 1 + cfg.contrast))
        if cfg.saturation > 0:
            v = TF.adjust_saturation(v, _uniform(g, 1 - cfg.saturation, 1 + cfg.saturation))
        if cfg.hue > 0:
            v = TF.adjust_hue(v, _uniform(g, -cfg.hue, cfg.hue))
        return v
