"""Self-supervised pretraining: views -> backbone -> pyramid -> projector -> predictor -> loss."""
