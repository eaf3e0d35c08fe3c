import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of retrying
FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (make test-gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A tiny generated competition in the COMP5329 format (runs/demo/data layout)."""
    from competition.demo_data import generate
    runs = tmp_path_factory.mktemp("runs")
    generate(runs / "demo" / "data", n_train=90, n_test=24, size=40, seed=3, workers=1)
    return runs / "demo" / "data"


@pytest.fixture
def demo_copy(demo_data, tmp_path) -> Path:
    """A private, writable copy of the tiny competition."""
    dst = tmp_path / "data"
    shutil.copytree(demo_data, dst)
    return dst


@pytest.fixture
def quirks(tmp_path) -> Path:
    """The hand-written fixture with the real file's quirks, as a captions-only data set."""
    shutil.copyfile(FIXTURES / "quirks_train.csv", tmp_path / "train.csv")
    shutil.copyfile(FIXTURES / "quirks_test.csv", tmp_path / "test.csv")
    return tmp_path


@pytest.fixture(scope="module")
def fold_data(demo_data, tmp_path_factory):
    """FoldData of the tiny demo at 32 px: 60 train rows, 30 validation rows (training-loop tests)."""
    import numpy as np

    from competition import load_dataset, load_spec
    from competition.layout import RunLayout
    from pipelines.cache import build_cache
    from pipelines.train import FoldData
    spec = load_spec("demo")
    ds = load_dataset(spec, demo_data)
    cache = build_cache(ds, RunLayout.of(tmp_path_factory.mktemp("folddata"), spec.name), 32, workers=1)
    y, rows = ds.targets().astype(np.float32), np.arange(90)
    return FoldData(cache, rows[:60], y[:60], rows[60:], y[60:], len(ds.train) + np.arange(len(ds.test)),
                    min_labels=1)
