"""Early fusion of caption and image, probed before it is built as a member (issue 30): does a head that sees both
beat, and add to, the blend of the separate members?

The BCE twin's trainable top (tf_efficientnet_lite2's last stage, conv_head, the attention head; built by
pipelines.model from the member's own config.yaml) reads the member's cached trunk features, and the caption's
frozen MiniLM sentence embedding (the captions_minilm cache) enters its attention head twice: as one more memory
token beside the image positions, and as a shift of every label query (zero at the start, so training starts from
the image head). `--tokens` adds the caption's word states (the tuned member's token-state cache) as memory tokens
too. Same folds, loss, AdamW, schedule (`pipelines.train.make_schedule`), EMA, flip views
(`pipelines.inference.views`, `mean_sigmoid`) and best-epoch selection (micro-F1 @0.5 on the held-out fold, the
spec's min-labels rule) as the member; unlike the member, which trains in fp32 on a CPU, it trains under bf16
autocast (an epoch 26 s against the member's 40 s on an AMX CPU, `docs/recipes.md`). This is a probe, not the
member: it writes OOF probabilities only (no test rows, no refit, no bundle), then prints the fully nested micro-F1
of the given members with and without it, from `submissions.postprocess.fully_nested` (the code `make submit` runs;
the size budget off).

    .venv/bin/python benchmarks/fusion_probe.py --runs runs/recipe6k --data data/comp5329-6k \
        --image-member lite2_bce_attn_384 --members captions_minilm_tuned,lite2_bce_attn_384 --out fusion_oof.npy

Needs in RUNS: the image member (its config and trunk cache), the captions_minilm embedding cache
(`make train MODEL=captions_minilm`), with --tokens the captions_minilm_tuned token states.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from timm.utils import ModelEmaV3
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from competition import load_dataset, load_spec, metrics  # noqa: E402
from competition.layout import RunLayout  # noqa: E402
from folds.split import read_folds  # noqa: E402
from pipelines.cache import cache_file  # noqa: E402
from pipelines.inference import mean_sigmoid, views  # noqa: E402
from pipelines.model import TopOfNet, build_model, tail_features, tokens_of  # noqa: E402
from pipelines.train import make_schedule  # noqa: E402
from submissions.blend import DEFAULT_BLENDS  # noqa: E402
from submissions.budget import Budget  # noqa: E402
from submissions.members import load_members  # noqa: E402
from submissions.postprocess import Settings, fully_nested  # noqa: E402
from submissions.scoring import Scoring  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Inputs:
    feats: np.ndarray      # (rows, 2 views, C, H, W) fp16 trunk features, train rows
    emb: torch.Tensor      # (rows, 384) sentence embeddings
    words: np.ndarray | None
    lengths: np.ndarray | None
    y: np.ndarray
    folds: np.ndarray
    min_labels: int        # the spec's rule: decide as the fold score and the submission will


class Fused(nn.Module):
    def __init__(self, top: TopOfNet, width: int, words: bool):
        super().__init__()
        self.top, d = top, top.head.queries.shape[1]
        self.memory = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, d), nn.ReLU())
        self.shift = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, d))
        nn.init.zeros_(self.shift[1].weight)
        nn.init.zeros_(self.shift[1].bias)
        self.words = nn.Sequential(nn.LayerNorm(width), nn.Dropout(0.2), nn.Linear(width, d), nn.ReLU()) \
            if words else None

    def forward(self, x, e, w=None, pad=None):
        t, h = self.top, self.top.head
        m = torch.cat([h.embed(tokens_of(tail_features(t.blocks, t.conv_head, t.bn2, t.pool, 0, x))),
                       self.memory(e)[:, None]], 1)
        mask = None
        if self.words is not None:
            mask = torch.cat([torch.zeros(len(x), m.shape[1], dtype=torch.bool), pad], 1)
            m = torch.cat([m, self.words(w).to(m.dtype)], 1)
        q = h.queries.unsqueeze(0) + self.shift(e)[:, None]
        q = h.norm1(q + h.attend(q, m, m, key_padding_mask=mask, need_weights=False)[0])
        q = h.norm2(q + h.ffn(q))
        return (q * h.group_weight).sum(-1) + h.group_bias


def captions(d: Inputs, rows):
    """The caption inputs of `rows`: sentence embeddings, and with --tokens word states and their padding mask."""
    if d.words is None:
        return d.emb[rows], None, None
    n = int(d.lengths[rows].max())
    pad = torch.from_numpy(np.arange(n)[None] >= d.lengths[rows][:, None])
    return d.emb[rows], torch.from_numpy(d.words[rows, :n].astype(np.float32)), pad


def image(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32)).contiguous(memory_format=torch.channels_last)


def predict(model, d: Inputs, rows) -> np.ndarray:
    """Both cached views of each row, averaged as the member's predictions are."""
    out = []
    for i in range(0, len(rows), 64):
        r = rows[i:i + 64]
        caps = captions(d, r)
        out.append(mean_sigmoid(lambda x, caps=caps: model(x.contiguous(memory_format=torch.channels_last), *caps),
                                views(torch.from_numpy(d.feats[r].astype(np.float32)), True),
                                torch.device("cpu"), torch.bfloat16).numpy())
    return np.concatenate(out)


def fit_fold(cfg: dict, d: Inputs, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(held-out rows, their probabilities at the best epoch, that epoch)."""
    torch.manual_seed(seed + k)
    model = Fused(TopOfNet(build_model(cfg, d.y.shape[1])[0], cfg["train_from"]), d.emb.shape[1],
                  d.words is not None).train()
    ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True)
    train, held = np.nonzero(d.folds != k)[0], np.nonzero(d.folds == k)[0]
    steps = len(train) // cfg["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    step_schedule, _ = make_schedule(cfg, opt, steps)
    rng, best = np.random.default_rng(seed + k), (-1.0, None, 0)
    for epoch in range(1, cfg["epochs"] + 1):
        start, order = time.time(), rng.permutation(train)
        for b in range(steps):
            step = (epoch - 1) * steps + b
            rows = np.sort(order[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]])
            step_schedule(step)
            with torch.autocast("cpu", torch.bfloat16):
                logits = model(image(d.feats[rows, rng.integers(0, 2, len(rows))]), *captions(d, rows))
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.from_numpy(d.y[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(model, step=step + 1)
        prob = predict(ema.module.eval(), d, held)
        f1 = metrics.f1(d.y[held], metrics.decide(prob, 0.5, d.min_labels))
        print(f"fold {k} epoch {epoch}: micro-F1@0.5 {f1:.4f} mAP {metrics.mean_average_precision(d.y[held], prob):.4f}"
              f" ({time.time() - start:.0f} s)", flush=True)
        if f1 > best[0]:
            best = (f1, prob, epoch)
    return held, best[1], best[2]


def load_inputs(run: RunLayout, ds, image_member: str, tokens: bool) -> tuple[dict, Inputs]:
    cfg = yaml.safe_load(run.model(image_member).config.read_text())
    n = len(ds.train)
    pattern = RunLayout.trunk_features(cache_file(ds, run, cfg["img_size"]), cfg["backbone"], cfg["train_from"], "*")
    trunk = sorted(pattern.parent.glob(pattern.name))
    sentences = sorted(run.cache.glob("sentences_*.npy"))
    words = sorted(p for p in run.cache.glob("tokens_*.npy") if not p.name.endswith(".lengths.npy"))
    if len(trunk) != 1 or len(sentences) != 1 or (tokens and len(words) != 1):
        sys.exit(f"error: {run.cache}: want one trunk cache at {cfg['img_size']} px, one sentence cache"
                 f"{', one token-state cache' if tokens else ''}; found {len(trunk)}, {len(sentences)}, {len(words)}")
    w = np.load(words[0])[:n] if tokens else None
    lengths = np.load(words[0].with_suffix("").with_suffix(".lengths.npy"))[:n] if tokens else None
    return cfg, Inputs(np.ascontiguousarray(np.load(trunk[0], mmap_mode="r")[:n]),
                       torch.from_numpy(np.load(sentences[0])[:n].astype(np.float32)), w, lengths,
                       ds.targets().astype(np.float32), read_folds(run.folds, list(ds.train["id"])),
                       ds.spec.min_labels_per_image)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--comp", default="comp5329")
    ap.add_argument("--image-member", required=True, help="a trunk-cached image member: its config and cache")
    ap.add_argument("--members", required=True, help="comma list: the blend to compare with and without the probe")
    ap.add_argument("--tokens", action="store_true", help="the caption's word states as memory tokens too")
    ap.add_argument("--also", default="", help="comma list of earlier probes' OOF .npy files: members too")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True, help="the probe's OOF probabilities (.npy, train.csv order)")
    a = ap.parse_args()
    spec = load_spec(a.comp)
    ds, run = load_dataset(spec, a.data, check=False), RunLayout.of(a.runs, spec.name)
    cfg, d = load_inputs(run, ds, a.image_member, a.tokens)
    oof = np.zeros_like(d.y)
    for k in range(int(d.folds.max()) + 1):
        held, prob, epoch = fit_fold(cfg, d, k, a.seed)
        oof[held] = prob
        print(f"fold {k}: best epoch {epoch}", flush=True)
    np.save(a.out, oof)
    print(f"probe OOF: micro-F1@0.5 {metrics.f1(d.y, metrics.decide(oof, 0.5, d.min_labels)):.4f} "
          f"mAP {metrics.mean_average_precision(d.y, oof):.4f} -> {a.out}")
    members = load_members(spec, ds, run, a.members.split(","), log=lambda *_: None)
    def as_member(name, p):  # sizes and test rows are the last member's: the budget is off here
        return dataclasses.replace(members[-1], name=name, oof=p.astype(np.float64), oof_sha256=name)
    members += [as_member(Path(f).stem, np.load(f)) for f in a.also.split(",") if f]
    probe = as_member("fusion_probe", oof)
    sc = Scoring.of(spec, ds.targets(), d.folds)
    settings = Settings(Budget(None, None), None, 200, 0, DEFAULT_BLENDS)
    for label, ms in (("members", members), ("members + probe", [*members, probe])):
        print(f"fully nested, {label}: {fully_nested(ms, sc, settings, lambda *_: None)['score']:.4f}")


if __name__ == "__main__":
    main()
