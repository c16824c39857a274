"""What a label PNG means: the one rule every reader of mask PNGs follows (the DAVIS reader, `evaluate`, and
`predict --prompt-mask`).

The rule:
- modes: palette (P), grayscale (L, I, I;16) or 1-bit (1); anything else is a DataError naming the file;
- the pixel value is the object id, 0 is background and 255 (`VOID_ID`) is void: pixels left out of the loss
  and of the scores;
- binary: a grayscale or 1-bit mask holding only 0 and 255 (DAVIS-2016, SA-V, most hand-made masks) is one
  object: 255 is object 1, not void. A 1-bit mask always reads as 0/255. A palette PNG is never binary: its
  255 is void, as in DAVIS-2017;
- where several masks are read together (the frames of one video in the DAVIS reader) the binary decision is
  taken over all of them and passed in as `binary`; otherwise each file decides for itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from sam2train.errors import DataError

VOID_ID = 255
"""Label value of void pixels (DAVIS), and of the object in a binary mask."""
MASK_MODES = ("P", "L", "1", "I", "I;16")
"""PIL modes a label PNG may have."""
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises on a file it cannot read."""


def bad_mode(mode: str) -> str:
    """The message for a mask PNG of an unsupported mode."""
    return f"has mode {mode}; expected palette (P) or grayscale (L, 1, I)"


def is_binary(modes: Iterable[str], values: set[int]) -> bool:
    """The binary rule over masks read together: no palette among `modes`, and `values` (every pixel value
    of them, 1-bit read as 0/255) are 0 and 255 with 255 present."""
    return "P" not in set(modes) and values <= {0, VOID_ID} and VOID_ID in values


def _pixels(im: Image.Image) -> np.ndarray:
    """[H, W] unsigned pixel values of an open mask image (1-bit as 0/255)."""
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    arr = np.asarray(im)
    if arr.dtype.kind == "i":  # mode I is int32: ids are never negative
        arr = arr.clip(0).astype(np.uint32)
    return arr


def mask_values(im: Image.Image) -> set[int]:
    """The set of pixel values of an open mask image (1-bit as {0, 255}), from its histogram when PIL has
    one for the mode (fast), else from the decoded pixels."""
    try:
        colors = im.getcolors(1 << 16)
    except ValueError:  # PIL has no getcolors for 16-bit PNGs (mode I;16)
        colors = None
    values = {int(c) for _, c in colors} if colors is not None else set(np.unique(_pixels(im)).tolist())
    if im.mode == "1":
        values = {VOID_ID if v else 0 for v in values}
    return values


def read_label_png(path: Path, *, gray_rgb: bool = False) -> tuple[np.ndarray, str]:
    """A mask PNG's raw pixel values [H, W] (unsigned ints, 1-bit as 0/255) and its mode; DataError naming
    the file when it is missing, unreadable or of another mode. `gray_rgb`: an RGB(A) image whose channels are
    equal reads as grayscale (hand-made prompt masks); a coloured one is still an error."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in MASK_MODES:
                if not (gray_rgb and mode in ("RGB", "RGBA")):
                    raise DataError(f"mask {path} {bad_mode(mode)}")
                rgb = np.asarray(im.convert("RGB"))
                if not (rgb == rgb[..., :1]).all():
                    raise DataError(
                        f"mask {path} is a colour ({mode}) image; {bad_mode(mode).split('; ')[1]}"
                    )
                return rgb[..., 0], "L"
            return _pixels(im), mode
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except READ_ERRORS as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None


def _values(raw: np.ndarray) -> set[int]:
    """The set of values of a raw mask (a histogram for 8-bit: much faster than np.unique on a frame)."""
    if raw.dtype == np.uint8:
        return set(np.flatnonzero(np.bincount(raw.reshape(-1), minlength=256)).tolist())
    return set(np.unique(raw).tolist())


def to_labels(raw: np.ndarray, mode: str, binary: bool | None = None) -> np.ndarray:
    """The id map [H, W] of a mask's raw values: 0 background, ids, `VOID_ID` void. `binary`: the decision
    taken over the masks read together, or None to decide from this mask alone (see the module docstring);
    a binary mask maps 255 to object 1."""
    if binary is None:
        binary = mode != "P" and is_binary([mode], _values(raw))
    if binary:
        return (raw == VOID_ID).astype(np.uint8)
    return raw


def read_labels(path: Path, binary: bool | None = None, *, gray_rgb: bool = False) -> np.ndarray:
    """A mask PNG as an id map [H, W] under the rule of this module (0 background, ids, 255 void; a binary mask
    is object 1); DataError naming the file."""
    raw, mode = read_label_png(path, gray_rgb=gray_rgb)
    return to_labels(raw, mode, binary)


def label_ids(labels: np.ndarray) -> list[int]:
    """The object ids of an id map [H, W], sorted: every value but 0 and void (a histogram: faster than
    np.unique on a frame)."""
    present = np.bincount(labels.reshape(-1)) > 0
    return [int(i) for i in np.flatnonzero(present) if i not in (0, VOID_ID)]
