"""ONNX Runtime (CPU) against eager PyTorch for a bundle's image network, on this machine, on real images.

    .venv/bin/pip install onnxruntime onnx onnxscript      # not in requirements.txt: measured, not used (below)
    .venv/bin/python benchmarks/onnx_vs_eager.py --bundle runs/<COMP>/bundles/<name> --data <folder> [--seconds 20]

The bundle's first image network, built and loaded as `make predict` builds it (`bundle.predict.load_nets`, from
its inference record), runs whole (trunk and top, no TTA) on one batch of --batch real test images, decoded and
normalised as `make predict` does:
  eager as make predict  the autocast dtype `make predict` picks here (bf16 on a CPU with AMX/AVX512-BF16)
  eager fp32             no autocast: what `make predict` runs on a CPU without native bf16
  onnxruntime fp32       the same network exported with torch.onnx (dynamic batch), CPU execution provider, all
                         graph optimisations, as many intra-op threads as torch uses
Each is timed for at least --seconds after two warm-up batches. It fails when ONNX Runtime's probabilities differ
from eager fp32's by more than 1e-3, or a timing is under a second.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bundle.predict import load_nets, read_record
from competition import load_spec
from competition.images import load_resized
from competition.reader import image_files, load_test


def rate(fn, batch: int, seconds: float) -> float:
    fn(), fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    elapsed = time.perf_counter() - t0
    if elapsed < 1.0:
        raise SystemExit(f"FAILED: {elapsed:.2f} s timed")
    return n * batch / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("FAILED: no onnxruntime: .venv/bin/pip install onnxruntime onnx onnxscript") from None
    spec = load_spec(str(a.bundle / "spec.yaml"))
    records = tuple(m for m in read_record(a.bundle).members if m.kind == "image")[:1]
    if not records:
        raise SystemExit("FAILED: the bundle has no image member")
    cpu = torch.device("cpu")
    n = load_nets(a.bundle, records, cpu)[0][1]
    ids = load_test(spec, a.data, False)["id"][:a.batch]
    size = n.record.net.img_size
    images = np.stack([load_resized(p, size) for p in image_files(a.data / spec.test_images, ids, spec)])
    x = n.record.normalizer(cpu)(torch.from_numpy(images))

    def eager(dtype):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
                return torch.sigmoid(n.net(x).float())
        return run
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        whole = n.net.eval()
        torch.onnx.export(whole, (x.contiguous(),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"x": x.contiguous().numpy()}

        def onnx():
            return 1 / (1 + np.exp(-session.run(None, feed)[0]))
        # The whole network, eager and ONNX: a trunk-cached member's fp16 rounding of its features is left out.
        gap = float(np.abs(onnx() - eager(None)().numpy()).max())
        if gap > 1e-3:
            raise SystemExit(f"FAILED: onnxruntime's probabilities differ from eager fp32's by {gap:.2e}")
        print(f"{records[0].name} ({n.record.net.backbone}, {size} px), batch {a.batch}, "
              f"{torch.get_num_threads()} threads; onnxruntime {ort.__version__} vs eager fp32: max |diff| {gap:.1e}")
        for name, fn in (("eager as make predict", eager(n.dtype)), ("eager fp32", eager(None)),
                         ("onnxruntime fp32", onnx)):
            print(f"  {name:<24} {rate(fn, a.batch, a.seconds):7.1f} img/s")


if __name__ == "__main__":
    main()
