"""Iterative multi-label stratified K-fold, written once as a `fold` column (runs/<COMP>/folds.csv)."""
from folds.split import make_folds, quality_report, read_folds

__all__ = ["make_folds", "read_folds", "quality_report"]
