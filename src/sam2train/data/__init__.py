"""Video data: sources (one reader per format), clip sampling, transforms, prompts, the dataset, the datamodule.

Names are imported on first use, so the CLI can build its parser (and `sam2train --help` answer) without torch.
"""

from __future__ import annotations

from importlib import import_module

_WHERE = {
    "DataError": "sam2train.errors",
    "Prompts": "sam2train.batch",
    "VideoBatch": "sam2train.batch",
    "VideoSample": "sam2train.batch",
    "collate_videos": "sam2train.batch",
    "SAM2LightningDataModule": "sam2train.data.datamodule",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
