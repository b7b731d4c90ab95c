"""The polyp data layer: every public format -> COCO json, unlabeled frame sources, synthetic data."""
