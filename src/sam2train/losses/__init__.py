"""Losses: pure per-mask terms, the spec's SAM2TrainingLoss (`loss.type: sam2train`) and Meta's training loss
(`loss.type: sam2`)."""
