"""Image-folder reader: `<root>/images/<name>.jpg|jpeg|png` with label PNGs `<root>/masks/<name>.png`, read under
the label-PNG rule of `sam2train.data.labels` (palette ids, or a 0/255 grayscale mask as object 1), decided per
image as the DAVIS reader decides it per video."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2train.data.labels import VOID_ID, is_binary, read_label_png, to_labels
from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import FrameMasks, VideoCheck, VideoInfo
from sam2train.data.sources.files import (
    IMAGE_EXTS,
    check_mask_size,
    frame_size,
    probe_masks,
    resize_nearest,
    select_videos,
    sort_stems,
    stack_masks,
)
from sam2train.data.sources.images import StillImageSource, finish_images, image_info

IMAGES_DIR, MASKS_DIR = "images", "masks"
"""The folder names read when `data.images_dir` / `data.masks_dir` are not set."""


class ImageFolderSource(StillImageSource):
    """Annotated images: `<root>/<images_dir>/<name>.<ext>` and `<root>/<masks_dir>/<name>.png` (default folder
    names `images` and `masks`). An image without a mask, or whose mask holds no object, is skipped (listed once);
    a mask without its image is an error. Object ids are the mask's values (255 is void, except in a 0/255
    grayscale mask, where it is object 1)."""

    def __init__(
        self,
        root: str | Path,
        videos: Sequence[str] | None = None,
        sink: ProblemSink = LOADING,
        images_dir: str | None = None,
        masks_dir: str | None = None,
    ):
        self.path = Path(root)
        self.image_root = self.path / (images_dir or IMAGES_DIR)
        self.mask_root = self.path / (masks_dir or MASKS_DIR)
        self.layout = (
            f"image folder layout: <root>/{self.image_root.name}/<name>.jpg and <root>/{self.mask_root.name}/"
            "<name>.png"
        )
        for folder in (self.image_root, self.mask_root):
            if not folder.is_dir():
                message = f"dataset folder not found ({self.layout})"
                sink.fatal(message, folder, loading=f"dataset folder not found: {folder} ({self.layout})")
        self._mask: dict[str, tuple[Path, bool]] = {}
        self._binary: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.checked: list[VideoCheck] = []
        images = self._list_images(sink)
        masks = {p.stem: p for p in self.mask_root.glob("*.png") if not p.name.startswith(".")}
        for stem in sorted(set(masks) - set(images)):
            no = f"no {self.image_root / stem}.jpg|.jpeg|.png"
            sink.error(
                f"mask has no image: {no}",
                masks[stem],
                stem,
                loading=f"mask {masks[stem]} has no image: {no}",
            )
        names = select_videos(list(images), videos, self.path)
        with_mask = [n for n in names if n in masks]
        probed = dict(zip(with_mask, probe_masks([masks[n] for n in with_mask], sink)))
        found: list[VideoInfo] = []
        for name in names:
            check = VideoCheck(name, images[name], frames=1)
            info = self._scan(check, masks.get(name), probed.get(name), sink)
            self._listed(check, info, found)
        self.videos = finish_images(found, self.skipped, self.path, sink)

    def _list_images(self, sink: ProblemSink) -> dict[str, Path]:
        """Image files by stem, sorted; two files with one stem are an error (the first is kept)."""
        files = sort_stems(
            [
                p
                for p in self.image_root.iterdir()
                if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
            ]
        )
        out: dict[str, Path] = {}
        for p in sorted(files, key=lambda p: p.name):
            if p.stem in out:
                pair = f"{out[p.stem].name} and {p.name}"
                sink.error(
                    f"two images with stem '{p.stem}': {pair}",
                    p,
                    p.stem,
                    loading=f"{p}: two images with stem '{p.stem}': {pair}",
                )
                continue
            out[p.stem] = p
        return {p.stem: p for p in sort_stems(list(out.values()))}

    def _scan(
        self, check: VideoCheck, mask: Path | None, probed: tuple | None, sink: ProblemSink
    ) -> VideoInfo | str | None:
        """The image's VideoInfo, the reason to skip it, or None when it has errors (checking)."""
        name, start = check.name, len(sink.problems)
        if mask is None or probed is None:
            return f"without a mask in {self.mask_root}"
        size = frame_size([check.folder], name, sink)
        if isinstance(probed[0], str):
            sink.error(str(probed[0]), mask, name, loading=str(probed[1]))
            return None
        mask_hw, mode, values = probed
        resize = size is not None and check_mask_size(
            mask_hw, size, sink, mask, name, "mask", f"image {name}: {mask}"
        )
        if max(values - {0, VOID_ID}, default=0) > VOID_ID:
            message = f"ids up to {max(values)}, beyond the 8-bit palette: object ids must be 1..254 (a 16-bit PNG?)"
            sink.error(message, mask, name, loading=f"mask {mask}: {message}")
        if sink.errors_of(start) or size is None:
            return None
        binary = is_binary([mode], values)
        ids = ({1} if VOID_ID in values else set()) if binary else values - {0, VOID_ID}
        check.binary, check.void_masks = binary, int(not binary and VOID_ID in values)
        check.annotated = [ids]
        if not ids:
            return "with no object in its mask"
        if binary:
            self._binary.add(name)
        self._mask[name] = (mask, resize)
        return image_info(name, check.folder, size, ids)

    def load_objects(self, video: VideoInfo, ids: Sequence[int]) -> FrameMasks:
        """Objects `ids` of the image's label PNG; void where the value is 255 (not in a binary mask)."""
        path, resize = self._mask[video.name]
        raw, mode = read_label_png(path)
        if resize:
            raw = resize_nearest(raw, video.size)
        binary = video.name in self._binary
        labels = to_labels(raw, mode, binary=binary)
        void = np.zeros(video.size, dtype=bool) if binary else labels == VOID_ID
        return stack_masks({i: labels == i for i in ids}, video.size, void=void)
