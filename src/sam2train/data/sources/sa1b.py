"""SA-1B reader: a folder of `<name>.jpg` + `<name>.json`, as Meta's SA1BRawDataset reads it (one image, about a
hundred RLE masks). The JSONs are checked at construction and read again when a sample is loaded, so memory does
not grow with the dataset; only the kept annotations' positions are held."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import FrameMasks, VideoCheck, VideoInfo
from sam2train.data.sources.files import frame_size, select_videos, stack_masks
from sam2train.data.sources.images import StillImageSource, finish_images, image_info
from sam2train.data.sources.json_rle import (
    check_segmentation,
    decode_all,
    decode_segmentation,
    entry_label,
    is_int,
    read_json,
    rle_area,
)
from sam2train.errors import DataError


class Sa1bSource(StillImageSource):
    """SA-1B: `<root>/<name>.json` with `annotations` (each an RLE `segmentation` at the image's size, `area`,
    optional `predicted_iou` and `stability_score`) beside `<images_root>/<name>.jpg` (default: the same folder).

    An annotation is an object unless its area is 0 or it falls under a threshold: `predicted_iou` below
    `min_predicted_iou`, `stability_score` below `min_stability_score` (a missing score passes), or more than
    `max_area_fraction` of the image (Meta's `mask_area_frac_thresh`). Object ids are 1, 2, ... over the kept
    annotations in the JSON's order. An image whose annotations are all filtered out is skipped (listed once).
    """

    def __init__(
        self,
        path: str | Path,
        images_root: str | Path | None = None,
        videos: Sequence[str] | None = None,
        sink: ProblemSink = LOADING,
        min_predicted_iou: float = 0.0,
        min_stability_score: float = 0.0,
        max_area_fraction: float = 1.0,
    ):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: an SA-1B dataset is a folder of <name>.jpg and <name>.json")
        self.images_root = Path(images_root) if images_root is not None else self.path
        if not self.images_root.is_dir():
            raise DataError(f"{self.path}: images_root folder not found: {self.images_root}")
        self.thresholds = (min_predicted_iou, min_stability_score, max_area_fraction)
        self._kept: dict[str, tuple[Path, tuple[int, ...]]] = {}
        self.skipped: dict[str, str] = {}
        self.checked: list[VideoCheck] = []
        found: list[VideoInfo] = []
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]] = []
        stems = sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))
        for name in select_videos(stems, videos, self.path):
            check = VideoCheck(name, self.path / f"{name}.json", frames=1)
            self._listed(check, self._scan(check, sink, jobs), found)
        decode_all(jobs, sink)
        self.videos = finish_images(found, self.skipped, self.path, sink)

    def _scan(
        self, check: VideoCheck, sink: ProblemSink, jobs: list[tuple[Any, tuple[int, int], str, str, Path]]
    ) -> VideoInfo | str | None:
        """The image's VideoInfo, the reason to skip it, or None when it has errors (checking)."""
        name, json_path = check.name, check.folder
        image = self.images_root / f"{name}.jpg"
        if not image.is_file():
            message = f"no image {image} for this JSON"
            sink.error(message, json_path, name, loading=f"{json_path}: {message}")
            return None
        try:
            data = read_json(json_path)
            if not isinstance(data, dict) or "annotations" not in data:
                raise DataError(
                    f"{json_path}: missing key 'annotations' (an SA-1B JSON lists its masks there)"
                )
            if not isinstance(data["annotations"], list):
                raise DataError(f"{json_path}: 'annotations' must be a list")
        except DataError as exc:
            sink.error(str(exc).removeprefix(f"{json_path}: "), json_path, name, loading=str(exc))
            return None
        start = len(sink.problems)
        size = frame_size([image], name, sink)
        if size is None:
            return None
        kept = self._keep(data["annotations"], size, json_path, name, sink, jobs)
        if sink.errors_of(start):
            return None
        if not data["annotations"]:
            return "without annotations"
        if not kept:
            return "with no annotation above the thresholds"
        check.annotated = [set(range(1, len(kept) + 1))]
        self._kept[name] = (json_path, tuple(kept))
        return image_info(name, image, size, range(1, len(kept) + 1))

    def _keep(
        self,
        anns: list,
        size: tuple[int, int],
        json_path: Path,
        name: str,
        sink: ProblemSink,
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]],
    ) -> list[int]:
        """Positions of the annotations that are objects; schema and size errors go to `sink`."""
        min_iou, min_stability, max_fraction = self.thresholds
        kept = []
        for i, ann in enumerate(anns):
            where = entry_label("annotations", i, ann)
            try:
                if not isinstance(ann, dict) or "segmentation" not in ann:
                    raise DataError(f"{where}: missing key 'segmentation'")
                rle_hw = check_segmentation(ann["segmentation"], where, polygons=False)
                if rle_hw is not None and rle_hw != size:
                    h, w = rle_hw
                    raise DataError(f"{where}: RLE is {w}x{h} but image {name}.jpg is {size[1]}x{size[0]}")
            except DataError as exc:
                sink.error(str(exc), json_path, name, loading=f"{json_path}: {exc}")
                continue
            area = ann.get("area")
            if not (isinstance(area, (int, float)) and not isinstance(area, bool)):
                area = rle_area(ann["segmentation"])
            if (
                area <= 0
                or _below(ann, "predicted_iou", min_iou)
                or _below(ann, "stability_score", min_stability)
            ):
                continue
            if area / (size[0] * size[1]) > max_fraction:
                continue
            kept.append(i)
            if sink.record and sink.full:
                jobs.append((ann["segmentation"], size, where, name, json_path))
        return kept

    def load_objects(self, video: VideoInfo, ids: Sequence[int]) -> FrameMasks:
        """Objects `ids` (1-based over the kept annotations), decoded from the JSON read again."""
        json_path, kept = self._kept[video.name]
        anns = read_json(json_path)["annotations"]
        masks = {
            i: decode_segmentation(
                anns[kept[i - 1]]["segmentation"],
                video.size,
                f"{json_path}: {entry_label('annotations', kept[i - 1], anns[kept[i - 1]])}",
            )
            for i in ids
        }
        return stack_masks(masks, video.size)


def _below(ann: dict, key: str, threshold: float) -> bool:
    value = ann.get(key)
    number = isinstance(value, float) or is_int(value)
    return threshold > 0 and number and value < threshold
