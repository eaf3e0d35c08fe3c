"""Competition specs, the tolerant CSV reader, image decoding, label encoding and metrics."""
from competition.errors import UserError
from competition.reader import Dataset, load_dataset
from competition.spec import Spec, available_specs, load_spec

__all__ = ["Spec", "load_spec", "available_specs", "UserError", "Dataset", "load_dataset"]
