"""The sentence encoder's last layers fine-tuned per fold, on cached token states (`tune_layers: k`).

The image members train their last stages on a frozen trunk's cached features; this does the same for the
captions: the encoder's lower layers run once over every caption (`token_states`, fp16, memory-mapped, shared by
every fold), and each fit trains copies of the top `k` transformer layers, mean pooling and a linear layer per
label on those states. A fit's weights are plain arrays (the k layers and the head, fp16 in its .npz), and at
inference the shared encoder's lower layers make the same states. The layers are written here in torch from the
encoder's own weights, so that a bundle's predictions do not depend on the transformers version: a test checks
that they reproduce the encoder's own sentence embeddings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from competition.artifacts import atomic_array, build_once
from competition.errors import UserError
from pipelines import text_encoder
from pipelines.model import round_to_saved

# A BERT layer's weights in the encoder's safetensors, by the name this module gives them.
WEIGHTS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
           "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
           "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}


@dataclasses.dataclass(frozen=True)
class EncoderShape:
    layers: int
    width: int
    heads: int
    ffn: int
    eps: float

    @classmethod
    def of(cls, folder: Path) -> EncoderShape:
        import json
        c = json.loads((Path(folder) / "config.json").read_text())
        return cls(c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["intermediate_size"],
                   c["layer_norm_eps"])


class Block(nn.Module):
    """One post-norm BERT encoder layer (self-attention, GELU feed-forward), as the encoder computes it."""

    def __init__(self, s: EncoderShape, dropout: float):
        super().__init__()
        self.heads, self.dropout = s.heads, dropout
        self.query, self.key, self.value, self.attn_out = (nn.Linear(s.width, s.width) for _ in range(4))
        self.attn_norm, self.ffn_norm = nn.LayerNorm(s.width, eps=s.eps), nn.LayerNorm(s.width, eps=s.eps)
        self.ffn_in, self.ffn_out = nn.Linear(s.width, s.ffn), nn.Linear(s.ffn, s.width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        def split(z):
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=keep[:, None, None, :], dropout_p=p)
        x = self.attn_norm(x + F.dropout(self.attn_out(a.transpose(1, 2).reshape(b, t, d)), p, self.training))
        return self.ffn_norm(x + F.dropout(self.ffn_out(F.gelu(self.ffn_in(x))), p, self.training))


class TopNet(nn.Module):
    """The encoder's top layers, masked mean pooling (the sentence encoder's own), and one logit per label."""

    def __init__(self, s: EncoderShape, k: int, n_labels: int, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(Block(s, dropout) for _ in range(k))
        self.head = nn.Linear(s.width, n_labels)

    def pooled(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, keep)
        w = keep.unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x, keep))


def pretrained_top(folder: Path, k: int, n_labels: int, seed: int = 0) -> TopNet:
    """A TopNet whose layers start as the encoder's last k, in fp32, and whose head starts from `seed` alone
    (not from whatever drew from torch's global generator before in the process)."""
    s = EncoderShape.of(folder)
    if k > s.layers:
        raise UserError(f"tune_layers={k}: the encoder in {folder} has {s.layers} layers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TopNet(s, k, n_labels)
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        prefix = "encoder.layer." if any(key.startswith("encoder.layer.") for key in f.keys()) else "layer."
        for i, block in enumerate(net.blocks):
            layer = s.layers - k + i
            for mine, theirs in WEIGHTS.items():
                for part in ("weight", "bias"):
                    getattr(getattr(block, mine), part).data.copy_(
                        f.get_tensor(f"{prefix}{layer}.{theirs}.{part}").float())
    return net


def layers_below(folder: Path, k: int) -> int:
    """How many of the encoder's layers run below its top k: the layer whose states are cached."""
    return EncoderShape.of(folder).layers - k


@dataclasses.dataclass(frozen=True)
class TokenStates:
    """Token states after the encoder's lower layers: (captions, tokens, width) fp16 and each caption's token
    count; `rows` picks captions without copying the states."""
    states: np.ndarray
    lengths: np.ndarray
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lengths) if self.rows is None else len(self.rows)

    def __getitem__(self, rows) -> TokenStates:  # indexed like the frozen members' embedding arrays
        rows = np.asarray(rows)
        return TokenStates(self.states, self.lengths, rows if self.rows is None else self.rows[rows])

    def batch(self, at: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(states as float32, the mask of real tokens) of positions `at`, cut to their longest caption."""
        rows = at if self.rows is None else self.rows[at]
        order = np.argsort(rows)  # a memory map reads faster in file order
        rows, back = rows[order], np.argsort(order)
        t = int(self.lengths[rows].max())
        x = torch.from_numpy(np.ascontiguousarray(self.states[rows, :t])).float()[back]
        keep = torch.arange(t)[None, :] < torch.from_numpy(self.lengths[rows].astype(np.int64))[back, None]
        return x, keep


def tokenize(model, texts) -> dict:
    """The tokenizer's own call (stable across sentence-transformers versions), as the encoder's encode() runs it."""
    return model[0].tokenizer([str(t).strip() for t in texts], padding=True, truncation=True,
                              max_length=model.max_seq_length, return_tensors="pt")


def fill_states(model, tok: dict, below: int, out: np.ndarray, batch_size: int = 128) -> None:
    """Token states after the encoder's first `below` layers into `out` (captions, longest, width), batch by
    batch: `out` may be the cache's memory map, so the states are never all in memory at once."""
    lengths = tok["attention_mask"].sum(1).numpy()
    bert = model[0].auto_model
    with torch.inference_mode():
        for start in range(0, len(lengths), batch_size):
            part = slice(start, start + batch_size)
            t = int(lengths[part].max())
            inputs = {k: v[part, :t] for k, v in tok.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out[part, :t] = bert(**inputs, output_hidden_states=True).hidden_states[below].numpy()


def encode_states(folder: Path, texts, below: int) -> tuple[np.ndarray, np.ndarray]:
    """Token states after the encoder's first `below` layers (fp16, padded to the longest caption) and token
    counts: what every fit of a `tune_layers` model reads."""
    model = text_encoder.load(folder)
    tok = tokenize(model, texts)
    out = np.zeros((*tok["input_ids"].shape, EncoderShape.of(folder).width), np.float16)
    fill_states(model, tok, below, out)
    return out, tok["attention_mask"].sum(1).numpy().astype(np.int32)


def cached_states(folder: Path, texts, below: int, cache_dir: Path) -> TokenStates:
    """The states of encode_states() once per (saved encoder, texts, layer), written straight into a memory map
    (1.7 GB in fp16 for the whole competition's 38,000 captions): shared by every fold and model."""
    digest = hashlib.sha1((Path(folder) / "model.safetensors").read_bytes() + f"below{below}".encode())
    for t in texts:
        digest.update(t.encode() + b"\0")
    stem = Path(cache_dir) / f"tokens_{digest.hexdigest()[:12]}"

    def build(path: Path) -> None:
        model = text_encoder.load(folder)
        tok = tokenize(model, texts)
        with atomic_array(stem.with_suffix(".lengths.npy"), np.int32, (len(texts),)) as out:
            out[:] = tok["attention_mask"].sum(1).numpy()
        with atomic_array(path, np.float16, (*tok["input_ids"].shape, EncoderShape.of(folder).width)) as out:
            fill_states(model, tok, below, out)
    path = build_once(stem.with_suffix(".npy"), build)  # the states last: their file means both are whole
    return TokenStates(np.load(path, mmap_mode="r"), np.load(stem.with_suffix(".lengths.npy")))


def predict(net: TopNet, x: TokenStates, batch_size: int = 256) -> np.ndarray:
    net.eval()
    order = np.argsort(x.lengths if x.rows is None else x.lengths[x.rows], kind="stable")  # similar lengths batch
    out = np.zeros((len(x), net.head.out_features), np.float32)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            at = order[start:start + batch_size]
            out[at] = torch.sigmoid(net(*x.batch(at))).numpy()
    return out


class TokenBatches:
    """Training batches of token states: (states, mask of real tokens) and their targets, in an order drawn from
    (run seed, epoch) alone, as the image batch sources draw theirs (a resumed epoch repeats it)."""

    def __init__(self, x: TokenStates, y: np.ndarray, batch_size: int, seed: int):
        self.x, self.y, self.batch_size, self.seed, self.epoch = x, torch.from_numpy(y), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        from pipelines.augment import stream_seed  # training only: make predict never loads the augmentations
        g = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, 1))
        for at in torch.randperm(len(self.x), generator=g).split(self.batch_size):
            at = at.numpy()
            yield self.x.batch(at), self.y[at]


def train(net: TopNet, x: TokenStates, y: np.ndarray, cfg, seed: int, log=None) -> list[dict]:
    """The image members' training loop (pipelines.train.train_one_epoch) on token states: AdamW, linear warm-up
    over the first 6% of steps then linear decay (BERT's fine-tuning schedule), binary cross-entropy against `y`
    (0/1 or soft targets); one row per epoch. `cfg`: a pipelines.config.CaptionsConfig."""
    from pipelines.train import plain_setup, train_one_epoch  # training only: make predict never loads the loop
    head = list(net.head.parameters())
    opt = torch.optim.AdamW([{"params": list(net.blocks.parameters()), "lr": cfg.tune_lr},
                             {"params": head, "lr": cfg.tune_head_lr}], weight_decay=0.01)
    batches = TokenBatches(x, np.asarray(y, np.float32), cfg.tune_batch, seed)
    steps = cfg.tune_epochs * len(batches)
    warm, peak = max(1, int(0.06 * steps)), [group["lr"] for group in opt.param_groups]

    def schedule(step: int) -> None:
        share = min((step + 1) / warm, max(0.0, (steps - step) / (steps - warm + 1)))
        for group, lr in zip(opt.param_groups, peak):
            group["lr"] = lr * share
    s = plain_setup(net, batches, opt, schedule, nn.BCEWithLogitsLoss(), cfg.tune_epochs, seed)
    rows, step = [], 0
    for epoch in range(cfg.tune_epochs):
        row, step = train_one_epoch(s, epoch, step)
        rows.append(row)
        if log:
            log(row)
    round_to_saved(net)  # the weights as saved (fp16): the fold's predictions are then the bundle's
    return rows


def state_arrays(net: TopNet) -> dict[str, np.ndarray]:
    """The fit's weights as fp16 arrays (what a bundle ships; the model computes in fp32 from them)."""
    return {f"top.{k}": v.detach().numpy().astype(np.float16) for k, v in net.state_dict().items()}


def from_arrays(arrays, s: EncoderShape, k: int, n_labels: int) -> TopNet:
    net = TopNet(s, k, n_labels)
    net.load_state_dict({k.removeprefix("top."): torch.from_numpy(arrays[k].astype(np.float32))
                         for k in arrays if k.startswith("top.")})
    return net.eval()
