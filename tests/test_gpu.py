"""CUDA paths (make test-gpu): they skip without a GPU and must pass on the GPU machine."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from competition import load_dataset, load_spec
from competition.layout import RunLayout
from pipelines.cache import build_cache
from pipelines.config import resolve
from pipelines.distributed import Dist

from test_pipelines import folds_for, kill_and_resume, torchrun_trains, uninterrupted

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])  # fp16: the grad scaler's state is resumed too
def test_kill_and_resume_on_cuda(demo_data, tmp_path, amp_dtype):
    """Killed after 2 epochs on CUDA and resumed: the OOF equals an uninterrupted run's within a stated
    tolerance (cuDNN picks kernels nondeterministically; a lost or repeated epoch moves them far more)."""
    args, env, d = kill_and_resume(demo_data, tmp_path, "device=cuda", f"amp_dtype={amp_dtype}", epochs=200)
    assert json.loads((d / "fold0" / "done.json").read_text())["device"] != "cpu"
    other = uninterrupted(demo_data, tmp_path, args, env)
    tokens = load_spec("demo").tokens
    a, b = (pd.read_csv(m / "oof.csv")[tokens].to_numpy() for m in (d, other))
    assert np.abs(a - b).mean() < 0.01 and np.abs(a - b).max() < 0.1


def tiny_setup(demo_data, tmp_path, *overrides):
    from pipelines.train import FoldData, setup
    ds = load_dataset(load_spec("demo"), demo_data)
    cfg = resolve("tiny", ["device=cuda", *overrides])
    cache = build_cache(ds, RunLayout(tmp_path), cfg.img_size, workers=1, quiet=True)
    y, rows = ds.targets(), np.arange(len(ds.train))
    return setup(cfg, FoldData(cache, rows[:60], y[:60], rows[60:], y[60:], rows[:0], min_labels=1), Dist())


@pytest.mark.parametrize("amp_dtype,scaled", [("bf16", False), ("fp16", True)])
def test_mixed_precision_steps(demo_data, tmp_path, amp_dtype, scaled):
    from pipelines.train import autocast, train_one_epoch
    s = tiny_setup(demo_data, tmp_path, f"amp_dtype={amp_dtype}")
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp_dtype]
    assert s.amp_dtype == want and s.scaler.is_enabled() == scaled
    x, _ = next(iter(s.train_loader))
    with autocast(s.device, s.amp_dtype):
        assert s.step_module(s.to_input(x, train=True)).dtype == want  # the forward really runs in it
    before = [p.detach().clone() for p in s.trained.parameters()]
    row, steps = train_one_epoch(s, 0, 0)
    assert steps == s.updates and np.isfinite(row["train_loss"])
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


def test_compiled_step_runs_compiled_and_matches_eager(demo_data, tmp_path):
    from torch._dynamo.eval_frame import OptimizedModule

    from pipelines.train import autocast
    compiled = tiny_setup(demo_data, tmp_path, "compile=true", "augment=none", "amp=false")
    eager = tiny_setup(demo_data, tmp_path, "compile=false", "augment=none", "amp=false")
    assert isinstance(compiled.step_module, OptimizedModule) and not isinstance(eager.step_module, OptimizedModule)
    x, y = next(iter(eager.train_loader))
    x, y = eager.to_input(x, train=True), y.to(eager.device)
    losses = []
    for s in (compiled, eager):  # the same seed built both: the same weights
        with autocast(s.device, s.amp_dtype):
            losses.append(s.loss_fn(s.step_module(x).float(), y).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


def test_compiled_training(demo_data, tmp_path):
    from pipelines.run import train_model
    folds_for(demo_data, tmp_path, k=2)
    spec = load_spec("demo")
    meta = train_model(spec, load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name),
                       resolve("tiny", ["epochs=1", "compile=true"]), log=lambda *_: None)
    oof = pd.read_csv(tmp_path / "demo" / "models" / "tiny" / "oof.csv")
    assert meta.folds_done == [0, 1] and np.isfinite(oof[spec.tokens].to_numpy()).all()


def test_torchrun_one_process_on_cuda(demo_data, tmp_path):
    """torchrun with one process on a GPU machine trains on the GPU as a plain run: one process needs no process
    group (pipelines.distributed starts NCCL only for WORLD_SIZE > 1; two processes need two GPUs)."""
    torchrun_trains(demo_data, tmp_path, 1)
    done = json.loads((tmp_path / "demo" / "models" / "tiny" / "fold0" / "done.json").read_text())
    assert done["backend"] == "none" and done["device"] != "cpu"


def test_bench_on_cuda(demo_data, tmp_path):
    from pipelines.bench import run_bench
    ds = load_dataset(load_spec("demo"), demo_data)
    out = run_bench(load_spec("demo"), ds, RunLayout.of(tmp_path, "demo"), resolve("tiny", ["batch_size=8"]), steps=50)
    assert out["steps_timed"] >= 50 and out["data_path"] == "device"
    assert 0 < out["feed_ratio"] and "in_memory_other_compile_images_per_s" in out
