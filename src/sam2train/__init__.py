"""sam2train: fine-tune SAM 2 (Segment Anything 2) on your own videos with PyTorch Lightning.

The public names are imported lazily, so `import sam2train` neither loads Lightning nor initialises Hydra.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Config", "SAM2LightningDataModule", "SAM2LightningModule", "SAM2TrainingLoss", "load_config"]


def __getattr__(name: str):
    if name in ("Config", "load_config"):
        from sam2train import config

        return getattr(config, name)
    if name == "SAM2LightningModule":
        from sam2train.train.module import SAM2LightningModule

        return SAM2LightningModule
    if name == "SAM2LightningDataModule":
        from sam2train.data.datamodule import SAM2LightningDataModule

        return SAM2LightningDataModule
    if name == "SAM2TrainingLoss":
        from sam2train.losses.training import SAM2TrainingLoss

        return SAM2TrainingLoss
    raise AttributeError(f"module 'sam2train' has no attribute {name!r}")
