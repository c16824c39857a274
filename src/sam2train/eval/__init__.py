"""After training: DAVIS metrics over folders, predict on new videos, export for Meta's predictor."""
