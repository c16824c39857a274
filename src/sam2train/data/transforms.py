"""Frame and mask preparation, identical for training and validation, plus clip-consistent augmentation.

The square resize is done exactly as Meta's `SAM2VideoPredictor` prepares its inputs (sam2 `utils/misc.py`), so a model
trained here sees at validation, at `predict` time and in Meta's tools the same pixels: frames with PIL bicubic
(aspect ratio squashed), masks bilinear with antialias then >= 0.5. Augmentations run after the resize with
torchvision.transforms.v2 on `tv_tensors.Video` / `tv_tensors.Mask` (masks use nearest), drawing every parameter
once per clip from the sample's generator so all frames move together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from sam2train.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_frame(frame: np.ndarray, size: int) -> torch.Tensor:
    """[H, W, 3] uint8 RGB -> [3, S, S] uint8, PIL bicubic (the predictor's resize)."""
    img = Image.fromarray(frame).resize((size, size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """[..., H, W] bool -> [..., S, S] bool: bilinear with antialias, then >= 0.5 (the predictor's mask prompt)."""
    lead = masks.shape[:-2]
    if masks.shape[-2:] == (size, size):
        return masks.clone()
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    if flat.shape[0] == 0:
        return torch.zeros(*lead, size, size, dtype=torch.bool)
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (out >= 0.5).reshape(*lead, size, size)


def resize_nearest(masks: torch.Tensor, size: int) -> torch.Tensor:
    """[..., H, W] bool -> [..., S, S] bool with nearest (void maps: no new void pixels invented)."""
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).to(torch.uint8)
    out = F.interpolate(flat, size=(size, size), mode="nearest-exact")
    return out.bool().reshape(*lead, size, size)


def normalize(video: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] uint8 -> float32 on the same device, /255 then ImageNet mean/std. Clips stay uint8 from
    the loader to the device (4x less to pin, copy and keep); the video pass normalises each chunk it encodes."""
    x = video.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def to_uint8_frames(images: torch.Tensor) -> np.ndarray:
    """[T,3,H,W] uint8 (as loaded) or `normalize`d float -> [T,H,W,3] uint8 RGB for drawing."""
    if images.dtype == torch.uint8:
        return images.permute(0, 2, 3, 1).numpy()
    images = images.float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


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
