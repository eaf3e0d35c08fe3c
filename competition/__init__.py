"""Competition specs, the tolerant CSV reader, image decoding, label encoding and metrics."""
from competition.spec import Spec, load_spec, available_specs
from competition.reader import DataError, Dataset, load_dataset

__all__ = ["Spec", "load_spec", "available_specs", "DataError", "Dataset", "load_dataset"]
