"""Blending, per-label thresholds, budgets and the validated submission file."""
