"""Explanations of trained models (Grad-CAM)."""
