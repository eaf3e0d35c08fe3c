"""CUDA paths (make test-gpu): they skip without a GPU and must pass on the GPU machine."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_pipelines import folds_for, kill_and_resume, torchrun_trains

from competition import load_dataset, load_spec
from competition.layout import RunLayout
from pipelines.cache import build_cache
from pipelines.config import resolve
from pipelines.distributed import Dist

pytestmark = pytest.mark.gpu


def test_kill_and_resume_on_cuda(demo_data, tmp_path):
    _, _, d = kill_and_resume(demo_data, tmp_path, "device=cuda")
    assert json.loads((d / "fold0" / "done.json").read_text())["device"] != "cpu"


def tiny_setup(demo_data, tmp_path, *overrides):
    from pipelines.train import FoldData, setup
    ds = load_dataset(load_spec("demo"), demo_data)
    cfg = resolve("tiny", ["device=cuda", *overrides])
    cache = build_cache(ds, RunLayout(tmp_path), cfg["img_size"], workers=1, quiet=True)
    y, rows = ds.targets(), np.arange(len(ds.train))
    return setup(cfg, FoldData(cache, rows[:60], y[:60], rows[60:], y[60:], rows[:0], min_labels=1), Dist())


@pytest.mark.parametrize("amp_dtype,scaled", [("bf16", False), ("fp16", True)])
def test_mixed_precision_steps(demo_data, tmp_path, amp_dtype, scaled):
    from pipelines.train import train_step
    s = tiny_setup(demo_data, tmp_path, f"amp_dtype={amp_dtype}")
    assert s.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp_dtype]
    assert s.scaler.is_enabled() == scaled
    before = [p.detach().clone() for p in s.trained.parameters()]
    for x, y in s.train_loader:
        loss = train_step(s, x, y)
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, s.trained.parameters()))


def test_device_path_and_channels_last(demo_data, tmp_path):
    from pipelines.data import DeviceBatches
    s = tiny_setup(demo_data, tmp_path)
    assert isinstance(s.train_loader, DeviceBatches) and s.train_loader.images.is_cuda
    x, _ = next(iter(s.train_loader))
    x = s.to_input(x, train=True)
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in s.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_training(demo_data, tmp_path):
    from pipelines.run import train_model
    folds_for(demo_data, tmp_path, k=2)
    spec = load_spec("demo")
    meta = train_model(spec, load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name),
                       resolve("tiny", ["epochs=1", "compile=true"]), log=lambda *_: None)
    oof = pd.read_csv(tmp_path / "demo" / "models" / "tiny" / "oof.csv")
    assert meta.folds_done == [0, 1] and np.isfinite(oof[spec.tokens].to_numpy()).all()


def test_torchrun_one_process_nccl(demo_data, tmp_path):
    torchrun_trains(demo_data, tmp_path, 1)  # on CUDA, Dist picks the NCCL backend


def test_bench_on_cuda(demo_data, tmp_path):
    from pipelines.bench import run_bench
    ds = load_dataset(load_spec("demo"), demo_data)
    out = run_bench(load_spec("demo"), ds, RunLayout.of(tmp_path, "demo"), resolve("tiny", ["batch_size=8"]), steps=50)
    assert out["steps_timed"] >= 50 and out["data_path"] == "device"
    assert 0 < out["feed_ratio"] and "in_memory_other_compile_images_per_s" in out
