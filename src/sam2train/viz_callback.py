"""Validation pictures (being written)."""

import lightning as L


class ValidationPictures(L.Callback):
    def __init__(self, every_n_epochs: int, num_frames_max: int = 8) -> None:
        self.every_n_epochs = every_n_epochs
