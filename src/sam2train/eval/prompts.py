"""First-frame prompts of `sam2train predict`, from its flags to `Prompts` at the model's input size.

`--prompt-mask` reads a label PNG under the one label rule (`data.labels`), every object or those `--objects`
names; `--points` and `--box` prompt one object each and repeat (`--points 1:100,200 --points 2:50,60,1;70,80,0
--box 3:10,10,40,40`). Points and boxes are mapped as Meta's `SAM2VideoPredictor` maps them (x * S / W,
y * S / H), masks as it resizes them (bilinear + antialias, then >= 0.5).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sam2train.errors import DataError, UserError

if TYPE_CHECKING:
    import numpy as np

    from sam2train.batch import Prompts

PROMPT_FLAGS = ("--prompt-mask", "--points", "--box")


def read_mask_prompt(path: str | Path, size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """Objects of a first-frame mask PNG -> (ids, masks [K, H, W] bool), read under the label-PNG rule of
    `sam2train.data.labels`: palette or grayscale values are object ids (255 void), a grayscale or 1-bit mask
    holding only 0 and 255 is object 1; a grayscale image saved as RGB reads as grayscale. The PNG must have
    the frames' size."""
    import numpy as np

    from sam2train.data.labels import label_ids, read_labels

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"--prompt-mask {path}: file not found")
    try:
        labels = read_labels(path, gray_rgb=True)
    except DataError as exc:
        raise DataError(f"--prompt-mask {path}: {str(exc).replace(f' {path}', '', 1)}") from None
    if labels.shape != size:
        raise DataError(
            f"--prompt-mask {path}: {labels.shape[1]}x{labels.shape[0]} (WxH) but the frames are "
            f"{size[1]}x{size[0]}"
        )
    ids = label_ids(labels)
    if not ids:
        raise DataError(f"--prompt-mask {path}: empty mask (every pixel is 0 or void): no object to track")
    if max(ids) > 254:
        raise DataError(f"--prompt-mask {path}: values up to {max(ids)}; object ids must be 1..254")
    return ids, np.stack([labels == i for i in ids])


def _numbers(text: str, counts: tuple[int, ...], flag: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise UserError(f"{flag} '{text}': expected {what}")
    return values


def parse_points(text: str, size: tuple[int, int]) -> tuple[list[list[float]], list[int]]:
    """`"x,y[,label];..."` in original pixels (label 1 positive, the default, or 0 negative) -> (coords
    [[x, y], ...], labels)."""
    height, width = size
    coords, labels = [], []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        x, y, *rest = _numbers(
            item, (2, 3), "--points", "'x,y' or 'x,y,label' with label 1 (positive) or 0 (negative)"
        )
        label = rest[0] if rest else 1
        if label not in (0, 1):
            raise UserError(f"--points '{item}': label must be 1 (positive) or 0 (negative), got {label:g}")
        if not (0 <= x < width and 0 <= y < height):
            raise UserError(f"--points '{item}': ({x:g}, {y:g}) lies outside the {width}x{height} frame")
        coords.append([x, y])
        labels.append(int(label))
    if not coords:
        raise UserError(f"--points '{text}': no point given; expected 'x,y,label;x,y,label;...'")
    return coords, labels


def parse_box(text: str, size: tuple[int, int]) -> list[float]:
    """`"x0,y0,x1,y1"` in original pixels -> [x0, y0, x1, y1]; must lie in the frame with x0 < x1, y0 < y1."""
    height, width = size
    x0, y0, x1, y1 = _numbers(text, (4,), "--box", "'x0,y0,x1,y1' in pixels")
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UserError(f"--box '{text}': needs 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    return [x0, y0, x1, y1]


def _values(value: str | list[str] | None) -> list[str]:
    """A flag's values: argparse's `append` list, or one string (a single value)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _object_id(text: str, flag: str) -> tuple[int | None, str]:
    """`"ID:rest"` -> (ID, rest); `"rest"` -> (None, rest)."""
    head, sep, rest = text.partition(":")
    if not sep:
        return None, text
    if not head.strip().isdigit() or not 1 <= int(head) <= 254:
        raise UserError(f"{flag} '{text}': the object id before ':' must be a whole number from 1 to 254")
    return int(head), rest


@dataclass
class ObjectPrompt:
    """One object's first-frame clicks (`points` [[x, y], ...] with `labels`) or `box` [x0, y0, x1, y1], in the
    video's pixels; `flag` is the option it came from."""

    flag: str
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    box: list[float] | None = None


def object_prompts(points: list[str], boxes: list[str], size: tuple[int, int]) -> dict[int, ObjectPrompt]:
    """Each `--points` / `--box` value prompts one object: `ID:` before it names the object, else it is object n
    for the n-th value of that flag. -> {object id: its prompt}."""
    found: dict[int, ObjectPrompt] = {}
    for flag, values in (("--points", points), ("--box", boxes)):
        for n, text in enumerate(values, 1):
            obj, body = _object_id(text, flag)
            obj = n if obj is None else obj
            if obj in found:
                raise UserError(
                    f"object {obj} is prompted twice ({found[obj].flag} and {flag}): one prompt per object; "
                    f"put an object's clicks in one --points 'ID:x,y;x,y,0' and number the others (ID:...)"
                )
            if flag == "--points":
                found[obj] = ObjectPrompt(flag, *parse_points(body, size))
            else:
                found[obj] = ObjectPrompt(flag, box=parse_box(body, size))
    return found


def parse_object_ids(text: str) -> list[int]:
    """`--objects "1,4,7"` -> [1, 4, 7]."""
    try:
        ids = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        ids = []
    if not ids or not all(1 <= i <= 254 for i in ids):
        raise UserError(f"--objects '{text}': expected object ids 1..254 separated by commas, e.g. 1,4,7")
    return ids


def _pick_objects(
    ids: list[int], masks: np.ndarray, wanted: list[int], path: str
) -> tuple[list[int], np.ndarray]:
    missing = sorted(set(wanted) - set(ids))
    if missing:
        raise UserError(f"--objects: {missing} not in --prompt-mask {path}, whose objects are {ids}")
    keep = [ids.index(i) for i in wanted]
    return wanted, masks[keep]


def model_prompts(
    args: argparse.Namespace, size: tuple[int, int], image_size: int
) -> tuple[list[int], Prompts]:
    """The first-frame prompts of `args` -> (object ids, sorted; Prompts at the model input, as the predictor
    maps them: masks bilinear + antialias >= 0.5; coordinates / (W, H) * S). A mask prompt gives every object of
    the PNG (or those of `--objects`); `--points` and `--box` (each repeatable) one object per value."""
    import torch

    from sam2train.batch import PROMPT_MASK, Prompts
    from sam2train.data.frames import resize_masks

    wanted = getattr(args, "objects", None)
    if args.prompt_mask is None:
        if wanted is not None:
            raise UserError(
                "--objects picks objects of --prompt-mask; with --points/--box number each object (ID:)"
            )
        table = object_prompts(_values(args.points), _values(args.box), size)
        return sorted(table), _point_and_box_prompts(table, size, image_size)
    ids, raw = read_mask_prompt(args.prompt_mask, size)
    if wanted is not None:
        ids, raw = _pick_objects(ids, raw, parse_object_ids(wanted), args.prompt_mask)
    k = len(ids)
    masks = resize_masks(torch.from_numpy(raw), image_size).float()
    coords, labels, boxes = torch.zeros(k, 1, 2), torch.full((k, 1), -1), torch.zeros(k, 4)
    kind = torch.full((k,), PROMPT_MASK)
    return ids, Prompts(kind=kind, point_coords=coords, point_labels=labels, boxes=boxes, masks=masks)


def _point_and_box_prompts(table: dict[int, ObjectPrompt], size: tuple[int, int], image_size: int) -> Prompts:
    """Prompts [K] for `object_prompts`'s table, objects in id order; clicks padded with label -1."""
    import torch

    from sam2train.batch import PROMPT_BOX, PROMPT_POINT, Prompts

    scale = torch.tensor([size[1], size[0]], dtype=torch.float32)  # (W, H): x * S / W, y * S / H
    ids = sorted(table)
    most = max((len(p.points) for p in table.values() if p.points is not None), default=1)
    coords, labels = torch.zeros(len(ids), most, 2), torch.full((len(ids), most), -1)
    boxes, kind = torch.zeros(len(ids), 4), torch.zeros(len(ids), dtype=torch.long)
    for j, obj in enumerate(ids):
        prompt = table[obj]
        if prompt.points is not None and prompt.labels is not None:
            n = len(prompt.points)
            coords[j, :n] = torch.tensor(prompt.points, dtype=torch.float32) / scale * image_size
            labels[j, :n] = torch.tensor(prompt.labels)
            kind[j] = PROMPT_POINT
        elif prompt.box is not None:
            boxes[j] = (torch.tensor(prompt.box, dtype=torch.float32).view(2, 2) / scale * image_size).view(4)
            kind[j] = PROMPT_BOX
    masks = torch.zeros(len(ids), image_size, image_size)
    return Prompts(kind=kind, point_coords=coords, point_labels=labels, boxes=boxes, masks=masks)


def vanished_objects(ids: list[int], prompts: Prompts) -> list[int]:
    """The objects prompted with a mask that has no pixel left at the model's input size."""
    from sam2train.batch import PROMPT_MASK

    empty = (prompts.kind == PROMPT_MASK) & ~prompts.masks.flatten(1).any(1)
    return [obj for obj, gone in zip(ids, empty.tolist()) if gone]
