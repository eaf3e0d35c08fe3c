"""Competition specs, the tolerant CSV reader, image decoding, label encoding and metrics."""
from competition.spec import Spec, load_spec, available_specs
from competition.errors import UserError
from competition.reader import Dataset, load_dataset

__all__ = ["Spec", "load_spec", "available_specs", "UserError", "Dataset", "load_dataset"]
