"""The model's input preparation, shared by training, validation and `predict`: frames and masks resized to the
square model input exactly as Meta's `SAM2VideoPredictor` prepares them (sam2 `utils/misc.py`), frames with PIL
bicubic (aspect ratio squashed), masks bilinear with antialias then >= 0.5, and the ImageNet normalisation.

Imports only torch, numpy and PIL: `predict` loads this and nothing of the augmentation stack (torchvision pulls
in torch._dynamo and sympy, ~0.2 GB of memory and over a second of start-up).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
