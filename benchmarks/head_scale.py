"""The attention head (ML-Decoder's queries, `head=attention`), grouped (`head_groups`) or not, and the linear head
by number of labels (issue 42): one training step's time and memory on a trunk's feature map, as `fit` runs the
head on cached trunk features.

    .venv/bin/python benchmarks/head_scale.py [--labels 18,1103] [--groups 100] [--batch 32] [--channels 1280]

Each (head, labels) runs in its own process (its peak resident memory is its own): the head from
`pipelines.model.build_head` with the config defaults (head_dim 256, 8 heads), BCE on random targets, AdamW,
10 warm-up steps then at least 30 timed (median). The input is a (batch, channels, grid, grid) feature map:
1280 x 12 x 12 is an EfficientNet-Lite2's last map at 384 px. It exits 1 if a step's loss is not finite.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one(head: str, labels: int, groups: int, batch: int, channels: int, grid: int) -> dict:
    import torch

    from pipelines.model import NetSpec, build_head
    torch.manual_seed(0)
    spec = NetSpec(backbone="x", mode="finetune", head=head, head_hidden=(), head_dim=256, head_heads=8,
                   head_groups=groups, extra_stages=0, dropout=0.0, drop_path=0.0, img_size=384, caption_input="none")
    net = build_head(channels, labels, spec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, grid, grid)
    if head != "attention":
        x = x.mean((2, 3))  # the linear head reads the pooled features
    y = (torch.rand(batch, labels) < 4.4 / labels).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for step in range(40):
        t0 = time.perf_counter()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 10:
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise SystemExit(f"{head} x {labels}: loss {loss.item()}")
    return {"head": head if not groups else f"{head}/{groups}", "labels": labels,
            "params": sum(p.numel() for p in net.parameters()), "ms": 1000 * statistics.median(times),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="18,1103")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1280)
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--groups", default="100", help="head_groups of the grouped attention rows (comma list)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # head,labels,groups: run in this process
    a = ap.parse_args(argv)
    if a.one:
        head, labels, groups = a.one.split(",")
        print(json.dumps(one(head, int(labels), int(groups), a.batch, a.channels, a.grid)))
        return 0
    print(f"batch {a.batch}, feature map {a.channels} x {a.grid} x {a.grid}; one step (forward, backward, AdamW)")
    print(f"{'head':<15}{'labels':>7}{'params':>11}{'ms/step':>9}{'images/s':>10}{'peak RSS':>10}")
    for labels in (int(n) for n in a.labels.split(",")):
        rows = [("linear", 0), ("attention", 0)] + [("attention", int(g)) for g in a.groups.split(",")
                                                    if 0 < int(g) < labels]
        for head, groups in rows:
            out = subprocess.run([sys.executable, __file__, "--one", f"{head},{labels},{groups}",
                                  "--batch", str(a.batch), "--channels", str(a.channels), "--grid", str(a.grid)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['head']:<15}{r['labels']:>7}{r['params']:>11,}{r['ms']:>9.1f}"
                  f"{a.batch / r['ms'] * 1000:>10.0f}{r['rss_mb']:>8.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
