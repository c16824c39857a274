"""Training: the LightningModule, the Trainer assembled from the config, callbacks, the optimizer."""
