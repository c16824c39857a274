"""COCO instance-segmentation JSON reader (images, not videos): every image with annotations is a one-frame
sample. The schema is checked at construction (naming the file and the entry); RLE strings are decoded when a
sample is loaded, or at construction when a checking sink asks for a full decode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import FrameMasks, VideoCheck, VideoInfo
from sam2train.data.sources.files import frame_size, select_videos, stack_masks
from sam2train.data.sources.images import StillImageSource, finish_images, image_info
from sam2train.data.sources.json_rle import (
    check_segmentation,
    decode_all,
    decode_segmentation,
    entry_label,
    read_json,
    require,
)
from sam2train.errors import DataError

_Row = tuple[Any, str, tuple[int, int] | None, bool]
"""(segmentation, where errors point, RLE (height, width) or None for polygons, iscrowd)."""


class CocoImageSource(StillImageSource):
    """A COCO instance-segmentation JSON: `images` (`id`, `file_name` relative to `images_root`) and
    `annotations` (`image_id`, `segmentation` as RLE or polygons, optional `iscrowd`).

    Each image with annotations is a sample named by its `file_name`; its objects are its annotations with
    `iscrowd` 0, ids 1, 2, ... in the JSON's order. Crowd annotations are not objects: their pixels are void
    (left out of the loss). An image without annotations, or with crowd annotations only, is skipped (listed
    once); an RLE whose size is not the image's is an error naming the annotation.
    """

    def __init__(
        self,
        path: str | Path,
        images_root: str | Path | None = None,
        videos: Sequence[str] | None = None,
        data: Any = None,
        sink: ProblemSink = LOADING,
    ):
        """`data`: the already parsed content of `path`, or None to read it. `videos`: keep only these images
        (by `file_name`)."""
        self.path = Path(path)
        data = read_json(self.path) if data is None else data
        require(data, ("images", "annotations"), str(self.path))
        for key in ("images", "annotations"):
            if not isinstance(data[key], list):
                raise DataError(f"{self.path}: '{key}' must be a list")
        if not data["annotations"]:
            message = (
                "'annotations' is empty: no usable image (a COCO video JSON gives its images a 'video_id')"
            )
            sink.fatal(message, self.path, loading=f"{self.path}: {message}")
        self.images_root = Path(images_root) if images_root is not None else self.path.parent
        if not self.images_root.is_dir():
            raise DataError(f"{self.path}: images_root folder not found: {self.images_root}")
        images = self._parse_images(data["images"], sink)
        per_image = self._parse_annotations(data["annotations"], images, sink)
        self._rows: dict[str, list[_Row]] = {}
        self.skipped: dict[str, str] = {}
        self.checked: list[VideoCheck] = []
        found: list[VideoInfo] = []
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]] = []
        by_name = {name: (image_id, file) for image_id, (name, file) in images.items()}
        for name in select_videos(list(by_name), videos, self.path):
            image_id, file = by_name[name]
            check = VideoCheck(name, file, frames=1)
            info = self._build(check, file, per_image.get(image_id, []), sink, jobs)
            self._listed(check, info, found)
        decode_all(jobs, sink)
        self.videos = finish_images(found, self.skipped, self.path, sink)

    def _parse_images(self, images: list, sink: ProblemSink) -> dict[Any, tuple[str, Path]]:
        """image id -> (name, file) of every well-formed entry of `images`."""
        out: dict[Any, tuple[str, Path]] = {}
        names: set[str] = set()
        for i, img in enumerate(images):
            where = entry_label("images", i, img)
            try:
                require(img, ("id", "file_name"), where)
                if img["id"] in out:
                    raise DataError(f"{where}: image id {img['id']} is used twice")
                if str(img["file_name"]) in names:
                    raise DataError(f"{where}: file_name '{img['file_name']}' is used twice")
            except DataError as exc:
                sink.error(str(exc).removeprefix(f"{self.path}: "), self.path, loading=f"{self.path}: {exc}")
                continue
            names.add(str(img["file_name"]))
            out[img["id"]] = (str(img["file_name"]), self.images_root / img["file_name"])
        return out

    def _parse_annotations(
        self, anns: list, images: dict[Any, tuple[str, Path]], sink: ProblemSink
    ) -> dict[Any, list[_Row]]:
        """image id -> its annotations, each schema-checked (a polygon needs 3 points)."""
        per_image: dict[Any, list[_Row]] = {}
        for i, ann in enumerate(anns):
            where = entry_label("annotations", i, ann)
            video = ""
            try:
                require(ann, ("image_id", "segmentation"), where)
                if ann["image_id"] not in images:
                    raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
                video = images[ann["image_id"]][0]
                rle_hw = check_segmentation(ann["segmentation"], where)
            except DataError as exc:
                sink.error(str(exc), self.path, video, loading=f"{self.path}: {exc}")
                continue
            crowd = bool(ann.get("iscrowd", 0))
            per_image.setdefault(ann["image_id"], []).append((ann["segmentation"], where, rle_hw, crowd))
        return per_image

    def _build(
        self,
        check: VideoCheck,
        file: Path,
        rows: list[_Row],
        sink: ProblemSink,
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]],
    ) -> VideoInfo | str | None:
        """The image's VideoInfo, the reason to skip it, or None when it has errors (checking)."""
        if not rows:
            return "without annotations"
        objects = [r for r in rows if not r[3]]
        if not objects:
            return "with crowd annotations only"
        start = len(sink.problems)
        size = frame_size([file], check.name, sink)
        if size is None:
            return None
        for seg, where, rle_hw, _ in rows:
            if rle_hw is not None and rle_hw != size:
                message = (
                    f"{where}: RLE is {rle_hw[1]}x{rle_hw[0]} but image {file.name} is {size[1]}x{size[0]}"
                )
                sink.error(message, self.path, check.name, loading=f"{self.path}: {message}")
            elif sink.record and sink.full:
                jobs.append((seg, size, where, check.name, self.path))
        check.annotated = [set(range(1, len(objects) + 1))]
        if sink.errors_of(start):
            return None
        self._rows[check.name] = rows
        return image_info(check.name, file, size, range(1, len(objects) + 1))

    def load_objects(self, video: VideoInfo, ids: Sequence[int]) -> FrameMasks:
        """Objects `ids` (1-based in the image's non-crowd annotations) and the crowd pixels as void."""
        rows = self._rows[video.name]
        objects = [r for r in rows if not r[3]]
        masks = {i: self._decode(objects[i - 1], video.size) for i in ids}
        void = np.zeros(video.size, dtype=bool)
        for row in rows:
            if row[3]:
                void |= self._decode(row, video.size)
        for m in masks.values():
            void &= ~m
        return stack_masks(masks, video.size, void=void)

    def _decode(self, row: _Row, size: tuple[int, int]) -> np.ndarray:
        return decode_segmentation(row[0], size, f"{self.path}: {row[1]}")
