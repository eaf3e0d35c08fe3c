"""Where a frozen trunk runs: eager PyTorch, or ONNX Runtime on a CPU.

On the 2-core CPU, EfficientNet-Lite2's whole network at 288 px (batch 64) ran 91.5 img/s in ONNX Runtime
(fp32) against 32.7 for eager PyTorch under bf16 autocast and 19.1 in fp32 (benchmarks/onnx_vs_eager.py).
Training's trunk cache and `make predict` choose by the same rule and a fit records what its features came
from (its inference record, pipelines/inference.py), so a bundle predicts with the runtime its member trained
on. Only frozen trunks: what trains needs autograd, and ONNX Runtime's CUDA build is not installed (CUDA runs eager).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings

import torch
from torch import nn

from competition.errors import UserError
from pipelines.model import trunk_forward, trunk_modules


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_runtime(choice: str, device: torch.device) -> str:
    """eager or onnx from config's trunk_runtime (auto | eager | onnx): onnx on a CPU where ONNX Runtime is
    installed (auto), eager on CUDA and otherwise."""
    if device.type != "cpu" or choice == "eager":
        return "eager"
    if choice == "onnx" and not onnx_available():
        raise UserError("trunk_runtime: onnx needs ONNX Runtime: pip install onnxruntime onnx")
    return "onnx" if onnx_available() else "eager"


class Trunk(nn.Module):
    """The frozen stages before `train_from` as one module (shares them with the net): what is exported."""

    def __init__(self, net, start: int):
        super().__init__()
        self.parts = nn.ModuleList(trunk_modules(net, start))

    def forward(self, x):
        for part in self.parts:
            x = part(x)
        return x


def onnx_session(module: nn.Module, example: torch.Tensor):
    """An ONNX Runtime CPU session of `module` (dynamic batch), as many intra-op threads as torch uses."""
    import onnxruntime as ort
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: it is 10x faster here
        torch.onnx.export(module.eval(), (example.contiguous(),), buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def trunk_runner(net, start: int, size: int, device: torch.device, dtype: torch.dtype | None, runtime: str):
    """A callable: normalised images (B, C, size, size) -> the trunk's float32 output, in `runtime`."""
    if runtime == "eager":
        def run(x):
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                return trunk_forward(net, start, x).float()
        return run
    in_chans = next(p.shape[1] for p in net.backbone.parameters() if p.dim() == 4)  # the first convolution's
    session = onnx_session(Trunk(net, start).to("cpu").float(), torch.zeros(1, in_chans, size, size))

    def run(x):
        return torch.from_numpy(session.run(None, {"x": x.float().contiguous().cpu().numpy()})[0])
    return run


def runtime_salt(runtime: str, dtype) -> str:
    """What keys a trunk cache besides its weights: the compute that made its features."""
    return str(dtype) if runtime == "eager" else "onnxruntime-fp32"
