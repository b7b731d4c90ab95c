"""Shared training machinery: distributed setup, AMP, atomic checkpoints and exact resume, logging."""
