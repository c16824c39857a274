"""Pseudo-videos from still images (`data.image_clip: pseudo_video`), as XMem and Cutie pre-train their memory.

Frame 0 is the image itself. Over the clip, each tracked object moves on its own smooth random path (rotation,
translation and scale about its centre, a quadratic Bezier from rest through a random waypoint), stacked in a
random depth order so objects pass over each other and occlude; the hole an object leaves is filled from the
surrounding background (normalised convolution at low resolution). The whole frame then follows a smooth camera
path of the same kind and a growing smooth elastic warp. Image, masks and void go through the same
torchvision.transforms.v2 functional ops (images bilinear, masks thresholded at 0.5, void nearest), and every
random draw comes from the sample's generator, so a clip is a pure function of (seed, epoch, index): data
workers and resumed runs redraw it identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class Motion:
    """How far things move by the clip's last frame (each range is drawn uniformly, both signs)."""

    object_degrees: float = 20.0
    object_translate: float = 0.15
    """Fraction of the image side."""
    object_scale: float = 0.25
    """Scale in [1 - x, 1 + x]."""
    camera_degrees: float = 8.0
    camera_translate: float = 0.06
    camera_scale: float = 0.1
    elastic: float = 0.03
    """Largest elastic displacement, in torchvision's normalised units (2 is the image side)."""
    elastic_grid: int = 4
    """Control points per side of the smooth random displacement field."""


MOTION = Motion()
_FILL_SIZE = 32
"""Side of the low-resolution image the holes are filled from."""


def _uniform(g: torch.Generator, bound: float, n: int = 1) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2 - 1) * bound


def _path(g: torch.Generator, degrees: float, translate: float, scale: float, size: int) -> torch.Tensor:
    """[2, 4] waypoint and end of a path of (angle, tx, ty, log-scale) that starts at rest."""
    points = []
    for _ in range(2):
        angle, tx, ty = _uniform(g, degrees), *_uniform(g, translate * size, 2)
        log_scale = torch.log1p(_uniform(g, scale))
        points.append(torch.stack([angle[0], tx, ty, log_scale[0]]))
    return torch.stack(points)


def _at(path: torch.Tensor, s: float) -> dict:
    """The affine parameters of a path at s in [0, 1] (quadratic Bezier from rest)."""
    p = 2 * (1 - s) * s * path[0] + s * s * path[1]
    return {
        "angle": float(p[0]),
        "translate": [float(p[1]), float(p[2])],
        "scale": float(p[3].exp()),
        "shear": [0.0, 0.0],
    }


def _fill_holes(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """image [3, S, S] float with the `hole` [S, S] pixels replaced by a smooth fill from the others."""
    if not hole.any():
        return image
    keep = (~hole).float()[None, None]
    small = [_FILL_SIZE, _FILL_SIZE]
    color = F.interpolate((image * keep[0])[None], size=small, mode="area")
    weight = F.interpolate(keep, size=small, mode="area")
    for _ in range(3):
        color, weight = TF.gaussian_blur(color, [9, 9], [3.0]), TF.gaussian_blur(weight, [9, 9], [3.0])
    mean = (image * keep[0]).sum((1, 2)) / keep.sum().clamp_min(1)
    fill = torch.where(weight > 1e-3, color / weight.clamp_min(1e-3), mean.view(1, 3, 1, 1))
    fill = F.interpolate(fill, size=list(image.shape[-2:]), mode="bilinear", align_corners=False)[0]
    return torch.where(hole, fill, image)


def _centre(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return [mask.shape[1] / 2, mask.shape[0] / 2]
    return [float(xs.float().mean()), float(ys.float().mean())]


def _displacement(g: torch.Generator, motion: Motion, size: tuple[int, int]) -> torch.Tensor:
    """[1, H, W, 2] smooth random displacement, largest value `motion.elastic`."""
    grid = _uniform(g, motion.elastic, 2 * motion.elastic_grid**2).view(1, 2, motion.elastic_grid, -1)
    field = F.interpolate(grid, size=list(size), mode="bicubic", align_corners=True)
    return field.clamp(-motion.elastic, motion.elastic).permute(0, 2, 3, 1)


def pseudo_video(
    image: torch.Tensor,
    masks: torch.Tensor,
    void: torch.Tensor,
    num_frames: int,
    g: torch.Generator,
    motion: Motion = MOTION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """image [3, S, S] uint8, masks [K, S, S] bool, void [S, S] bool -> frames [T, 3, S, S] uint8,
    masks [T, K, S, S] bool, void [T, S, S] bool (T = num_frames); frame 0 is the input."""
    k, (h, w) = masks.shape[0], image.shape[-2:]
    side = min(h, w)
    paths = [
        _path(g, motion.object_degrees, motion.object_translate, motion.object_scale, side) for _ in range(k)
    ]
    order = torch.randperm(k, generator=g).tolist()
    camera = _path(g, motion.camera_degrees, motion.camera_translate, motion.camera_scale, side)
    shift = _displacement(g, motion, (h, w))
    pixels = image.float()
    background = _fill_holes(pixels, masks.any(0)) if k else pixels
    centres = [_centre(m) for m in masks]
    frames, out_masks, out_void = [], [], []
    for t in range(num_frames):
        s = t / (num_frames - 1) if num_frames > 1 else 0.0
        canvas, layers = background.clone(), torch.zeros(k, h, w)
        for obj in order:  # back to front: a later object covers the earlier ones
            layer = torch.cat([pixels, masks[obj, None].float()])
            if s > 0:
                layer = TF.affine(
                    layer, **_at(paths[obj], s), interpolation=InterpolationMode.BILINEAR, center=centres[obj]
                )
            on = layer[3] >= 0.5
            canvas = torch.where(on, layer[:3], canvas)
            layers[:, on] = 0.0
            layers[obj] = on.float()
        still = void & ~(layers > 0).any(0)
        stack = torch.cat([canvas, layers, still[None].float()])
        if s > 0:
            stack = TF.affine(stack, **_at(camera, s), interpolation=InterpolationMode.BILINEAR)
            stack = TF.elastic(stack, shift * s, interpolation=InterpolationMode.BILINEAR)
        frames.append(stack[:3].round().clamp(0, 255).to(torch.uint8))
        out_masks.append(stack[3 : 3 + k] >= 0.5)
        out_void.append(stack[3 + k] >= 0.5)
    return torch.stack(frames), torch.stack(out_masks), torch.stack(out_void)
