"""One fold of one image backbone: a plain loop with EMA, early stopping and per-epoch resume."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

from competition import metrics
from competition.artifacts import atomic_path
from competition.errors import UserError
from competition.images import channel_moments
from competition.layout import FitLayout
from pipelines.augment import BatchAugment, eval_transform, mix_batch, stream_seed, train_transform
from pipelines.config import ImageConfig
from pipelines.data import (
    CachedImages,
    DeviceBatches,
    auto_workers,
    load_cache_rows,
    make_loader,
    set_loader_epoch,
)
from pipelines.distributed import Dist
from pipelines.inference import InferenceRecord, call, mean_sigmoid, views
from pipelines.losses import build_loss
from pipelines.model import TopOfNet, build_model, inference_dtype, load_weights, save_weights
from pipelines.preprocess import DeviceNormalize
from pipelines.result import FitResult
from pipelines.schedules import make_schedule
from pipelines.trunk import TrunkFeatures, trunk_cache


@dataclasses.dataclass
class FoldData:
    """What one fit needs: cache rows and targets for train/val/test. val may be empty (full fit)."""
    cache: Path
    train_rows: np.ndarray
    train_y: np.ndarray
    val_rows: np.ndarray
    val_y: np.ndarray
    test_rows: np.ndarray
    min_labels: int           # the spec's rule: validation decides as the fold score and submission will
    captions: np.ndarray | None = None  # caption_input: every cache row's sentence embedding (train, then test)
    stats: tuple | None = None  # (mean, std) of each channel from the spec; None: measured (channel_stats)

    @property
    def in_chans(self) -> int:
        """The images' channels, as the cache holds them (rows, size, size, channels)."""
        return int(np.load(self.cache, mmap_mode="r").shape[-1])

    def channel_stats(self, most: int = 2000) -> tuple[tuple, tuple]:
        """Each channel's mean and standard deviation (in [0, 1]) over the cache's labelled images (every k-th of
        them, at most `most`): a stain's brightness is its own, not ImageNet's. The same rows for every fold and
        the refit (no label is read), so their trunk caches are one."""
        labelled = np.setdiff1d(np.arange(len(np.load(self.cache, mmap_mode="r"))), self.test_rows)
        rows = labelled[::max(1, -(-len(labelled) // most))]
        return channel_moments(np.load(self.cache, mmap_mode="r")[rows])


def device_setup(cfg: ImageConfig, dist: Dist):
    """(device, training autocast dtype, inference autocast dtype). On a CPU with native bf16, inference
    runs in bf16 (2.0x faster predictions here, benchmarks/cpu_bf16.py) but training stays fp32: its backward
    was no faster."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda asked for, but torch sees no CUDA device")
    on_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{dist.local_rank}" if on_cuda else "cpu")
    infer_dtype = inference_dtype(cfg.amp, cfg.amp_dtype, device)
    return device, infer_dtype if device.type == "cuda" else None, infer_dtype


def autocast(device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


@torch.no_grad()
def predict(module, loader, to_input, device, amp_dtype, tta: bool) -> np.ndarray:
    """Sigmoid probabilities of `module` over a loader, optionally averaged with the mirror view: the inference
    record's rules (pipelines.inference), which `make predict` applies to decoded images."""
    module.eval()
    out = [mean_sigmoid(module, views(to_input(x), tta), device, amp_dtype).cpu().numpy() for x, _ in loader]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def data_path(cfg: ImageConfig) -> str:
    """device (cache rows on the device, batched augmentation), loader (DataLoader + albumentations per
    image), or trunk (cached trunk features, train_from)."""
    return "trunk" if cfg.train_from is not None else cfg.data_path


def image_inputs(cfg, data: FoldData, mean, std, device, channels_last, dist: Dist):
    """Train/val/test batch sources over the image cache, and the uint8 -> model-input step."""
    size, bs, seed = cfg.img_size, cfg.batch_size, cfg.seed
    drop_last = len(data.train_rows) > bs
    if data_path(cfg) == "device":
        images = load_cache_rows(data.cache, device)
        to_input = DeviceNormalize(mean, std, device, channels_last, BatchAugment(cfg.augment, size))
        return (DeviceBatches(images, data.train_rows, data.train_y, bs, device, shuffle=True, drop_last=drop_last,
                              seed=seed, rank=dist.rank, world=dist.world),
                DeviceBatches(images, data.val_rows, None, bs * 2, device),
                DeviceBatches(images, data.test_rows, None, bs * 2, device), to_input)
    augment = train_transform(cfg.augment, size, data.in_chans)
    train_ds = CachedImages(data.cache, data.train_rows, data.train_y, augment, seed)
    return (*loaders(cfg, device, dist, train_ds, CachedImages(data.cache, data.val_rows, None, eval_transform(size)),
                     CachedImages(data.cache, data.test_rows, None, eval_transform(size))),
            DeviceNormalize(mean, std, device, channels_last))


def loaders(cfg, device, dist: Dist, train_ds, val_ds, test_ds) -> tuple:
    """DataLoaders for the loader and trunk paths: shuffled (or DDP-sampled) training, twice the batch to evaluate."""
    bs, seed, workers = cfg.batch_size, cfg.seed, auto_workers(cfg.workers, device)
    return (make_loader(train_ds, bs, True, workers, device, len(train_ds) > bs, dist.sampler(train_ds, seed), seed),
            make_loader(val_ds, bs * 2, False, workers, device), make_loader(test_ds, bs * 2, False, workers, device))


def trunk_inputs(cfg, data: FoldData, net, record: InferenceRecord, device, channels_last, dist: Dist):
    """Batch sources over cached trunk features (train_from), and the module that trains on them."""
    top = TopOfNet(net, cfg.train_from)
    features = trunk_cache(net, record, data.cache, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def to_device(x, train=False):
        if isinstance(x, (tuple, list)):  # (features, caption embeddings)
            return (to_device(x[0]), *(c.to(device, non_blocking=True) for c in x[1:]))
        x = x.to(device, non_blocking=True)
        return x if x.dim() == 5 else x.contiguous(memory_format=fmt)
    caps = data.captions  # the head refuses a batch with or without them against its caption input
    train_ds = TrunkFeatures(features, data.train_rows, data.train_y, train=True, seed=cfg.seed, captions=caps)
    return (*loaders(cfg, device, dist, train_ds, TrunkFeatures(features, data.val_rows, captions=caps),
                     TrunkFeatures(features, data.test_rows, captions=caps)), to_device, top)


def model_start(net, top) -> int:
    return len(net.backbone.blocks) - len(top.blocks)


def as_full_net(net, model, evaluated):
    """The whole network with the evaluated (EMA) weights of the trained part: what inference needs."""
    if model is net:  # full fine-tuning: evaluated is the net or its EMA copy
        return evaluated
    if evaluated is model:  # the top shares its modules with the net
        return net
    full = copy.deepcopy(net)
    TopOfNet(full, model_start(net, model)).load_state_dict(evaluated.state_dict())
    return full


def restore_best(net, model, evaluated, path: Path) -> None:
    if model is net:
        load_weights(evaluated, path)
        return
    load_weights(net, path)
    if evaluated is not model:
        evaluated.load_state_dict(TopOfNet(net, model_start(net, model)).state_dict())


def save_state(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@dataclasses.dataclass
class Setup:
    """Everything the training loop holds: built once (`setup` for an image network, `plain_setup` for a module
    fed from memory: the tuned captions member), run by `train_one_epoch`, `fit` and the benchmark."""
    epochs: int
    seed: int                     # every epoch's random streams derive from it (`start_epoch`)
    grad_clip: float | None
    mix: tuple[float, float, float]  # mixup alpha, cutmix alpha, the share of batches mixed
    dist: Dist
    device: torch.device
    amp_dtype: torch.dtype | None    # training steps' autocast
    infer_dtype: torch.dtype | None  # predictions' autocast
    record: InferenceRecord | None  # how the saved network predicts (written into the fit's done.json)
    net: torch.nn.Module          # the whole network: what is saved and what inference needs
    trained: torch.nn.Module      # what the optimizer updates: the net, or its top on cached trunk features
    step_module: torch.nn.Module  # `trained` as the train step calls it: compiled and/or DDP-wrapped
    evaluated: torch.nn.Module    # what validation and test predictions use: the EMA of `trained`, or `trained`
    source: str
    to_input: object              # loader batch -> model input on the device (augments training image batches)
    train_loader: object
    val_loader: object
    test_loader: object
    updates: int
    optimizer: object
    step_schedule: object
    sched_state: object
    loss_fn: torch.nn.Module
    scaler: torch.amp.GradScaler
    ema: object


def setup(cfg: ImageConfig, data: FoldData, dist: Dist) -> Setup:
    torch.manual_seed(cfg.seed)
    device, amp_dtype, infer_dtype = device_setup(cfg, dist)
    net, source, mean, std = build_model(cfg, data.train_y.shape[1], data.in_chans)
    if data.stats:  # the spec's: each channel standardised by them, which the record keeps
        mean, std = data.stats
    elif data.in_chans != 3:  # not RGB: by each channel's own statistics, measured
        mean, std = data.channel_stats()
    record = InferenceRecord.of(cfg, data.train_y.shape[1], mean, std, device)
    channels_last = cfg.channels_last
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if cfg.train_from is None:
        trained = net
        train_loader, val_loader, test_loader, to_input = image_inputs(
            cfg, data, mean, std, device, channels_last, dist)
    else:
        train_loader, val_loader, test_loader, to_input, trained = trunk_inputs(
            cfg, data, net, record, device, channels_last, dist)
    updates = len(train_loader) if cfg.max_train_batches is None else min(len(train_loader),
                                                                              cfg.max_train_batches)
    if cfg.layer_decay is not None and (trained is not net or cfg.mode == "frozen"):
        raise UserError("layer_decay applies to full fine-tuning only (no train_from, mode: finetune)")
    optimizer = create_optimizer_v2(trained.trainable(), opt=cfg.optimizer, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                    layer_decay=cfg.layer_decay)
    step_schedule, sched_state = make_schedule(cfg, optimizer, updates)
    ema = ModelEmaV3(trained, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
    return Setup(
        epochs=cfg.epochs, seed=cfg.seed, grad_clip=cfg.grad_clip, mix=(cfg.mixup, cfg.cutmix, cfg.mix_prob),
        dist=dist, device=device, amp_dtype=amp_dtype, infer_dtype=infer_dtype, record=record, net=net,
        trained=trained,
        step_module=dist.wrap(torch.compile(trained) if cfg.compile else trained),
        evaluated=ema.module if ema is not None else trained, source=source, to_input=to_input,
        train_loader=train_loader, val_loader=val_loader, test_loader=test_loader, updates=updates,
        optimizer=optimizer, step_schedule=step_schedule, sched_state=sched_state,
        loss_fn=build_loss(cfg.loss, data.train_y).to(device),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), ema=ema)


def plain_setup(module: torch.nn.Module, batches, optimizer, step_schedule, loss_fn, epochs: int,
                seed: int) -> Setup:
    """The loop's record for a module trained in fp32 on the CPU, without EMA, mixing or clipping, from a batch
    source of (input, target) already in memory that has `set_epoch` (the tuned captions member's)."""
    cpu = torch.device("cpu")
    return Setup(epochs=epochs, seed=seed, grad_clip=None, mix=(0.0, 0.0, 1.0), dist=Dist(), device=cpu,
                 amp_dtype=None, infer_dtype=None, record=None, net=module, trained=module, step_module=module,
                 evaluated=module, source="", to_input=lambda x, train=False: x, train_loader=batches,
                 val_loader=None, test_loader=None, updates=len(batches), optimizer=optimizer,
                 step_schedule=step_schedule, sched_state=None, loss_fn=loss_fn,
                 scaler=torch.amp.GradScaler("cpu", enabled=False), ema=None)


def optimize(s: Setup, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimisation step on a batch that is already the model's input (what the in-memory bench times)."""
    with autocast(s.device, s.amp_dtype):
        loss = s.loss_fn(call(s.step_module, x).float(), y)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if s.grad_clip:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.trained.parameters(), s.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    return loss.detach()


def start_epoch(s: Setup, epoch: int) -> None:
    """Every random stream of an epoch (order, augmentation, dropout) from (run seed, epoch): a resumed
    run continues exactly as the uninterrupted one would have, on any device and any worker count."""
    seed = s.seed
    set_loader_epoch(s.train_loader, seed, epoch)
    if isinstance(s.to_input, DeviceNormalize) and s.to_input.augment is not None:
        s.to_input.augment.reseed(s.device, seed, epoch, 2)
    torch.manual_seed(stream_seed(seed, epoch, 3))  # CPU and every CUDA device


def train_one_epoch(s: Setup, epoch: int, step: int, label: str = "", max_steps: int | None = None,
                    on_step=None) -> tuple[dict, int]:
    """One pass over the training batches, one optimizer step each (the bench times this very function); the loss
    stays on the device until the epoch ends."""
    start_epoch(s, epoch)
    s.step_module.train()
    limit = s.updates if max_steps is None else min(s.updates, max_steps)
    loss_sum, seen, steps, t0 = torch.zeros((), device=s.device), 0, 0, time.perf_counter()
    show = s.dist.is_main and sys.stderr.isatty()  # logs get the epoch line only
    bar = tqdm(total=limit, desc=f"{label} epoch {epoch + 1}/{s.epochs}", leave=False, disable=not show)
    for i, (x, y) in enumerate(s.train_loader):
        if i >= limit:
            break
        s.step_schedule(step)
        x, y = s.to_input(x, train=True), y.to(s.device, non_blocking=True)  # augmented on the device path
        x, y = mix_batch(x, y, *s.mix)
        loss_sum += optimize(s, x, y)
        step, steps, seen = step + 1, steps + 1, seen + len(y)
        if s.ema is not None:
            s.ema.update(s.trained, step=step)
        if on_step is not None:
            on_step(i, len(y))
        bar.update()
        if show and i % 50 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}", ips=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    seconds = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(steps, 1),
           "lr": s.optimizer.param_groups[0]["lr"], "rows_per_s": seen * s.dist.world / max(seconds, 1e-9)}
    return row, step


def evaluate(s: Setup, y: np.ndarray, min_labels: int) -> dict:
    """Validation loss and metrics of the evaluated (EMA) weights, each computed once; decisions follow the
    spec's min-labels rule, so early stopping picks by the score the fold records."""
    prob = predict(s.evaluated, s.val_loader, s.to_input, s.device, s.infer_dtype, tta=False)
    loss = torch.nn.functional.binary_cross_entropy(
        torch.from_numpy(prob).double().clamp(1e-7, 1 - 1e-7), torch.from_numpy(y).double())
    pred = metrics.decide(prob, 0.5, min_labels)
    return {"val_loss": float(loss), "micro_f1": metrics.f1(y, pred, "micro"), "macro_f1": metrics.f1(y, pred, "macro"),
            "mAP": metrics.macro_ap(y, prob)}


@dataclasses.dataclass
class Progress:
    """Where a fit stands after an epoch: what a checkpoint saves and a resume restores."""
    history: list = dataclasses.field(default_factory=list)
    epoch: int = 0              # epochs finished
    best: float = -np.inf       # best selection score so far
    best_epoch: int = 0
    step: int = 0               # optimizer updates so far (the schedule's position)


def resume(s: Setup, state_path: Path, log, label) -> Progress:
    """The progress after the last finished epoch, its weights, optimizer, EMA, schedule and scaler loaded.

    The state is loaded on the CPU with weights_only (tensors, dicts, numbers): each piece then goes
    where its module lives. The random streams need no state: `start_epoch` derives them.
    """
    if not state_path.exists():
        return Progress()
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    s.trained.load_state_dict(st["model"])
    s.optimizer.load_state_dict(st["optimizer"])
    if s.ema is not None:
        s.ema.load_state_dict(st["ema"])
    if s.sched_state is not None:
        s.sched_state.load_state_dict(st["scheduler"])
    if st.get("scaler"):
        s.scaler.load_state_dict(st["scaler"])
    log(f"{label}: resuming after epoch {st['epoch']}")
    return Progress(st["history"], st["epoch"], st["best"], st["best_epoch"], st["step"])


def checkpoint(s: Setup, path: Path, p: Progress) -> None:
    save_state(path, model=s.trained.state_dict(), optimizer=s.optimizer.state_dict(),
               ema=s.ema.state_dict() if s.ema is not None else None,
               scheduler=s.sched_state.state_dict() if s.sched_state is not None else None,
               scaler=s.scaler.state_dict() if s.scaler.is_enabled() else None,
               history=p.history, epoch=p.epoch, best=float(p.best), best_epoch=p.best_epoch, step=p.step)


def fit(cfg: ImageConfig, data: FoldData, out: FitLayout, label: str, dist: Dist | None = None,
        log=print) -> FitResult:
    """Train, keep the best epoch (or the last when there is no validation), predict val+test with TTA. Every
    epoch ends in a checkpoint: a killed run resumes after its last finished epoch."""
    t0 = time.time()
    dist = dist or Dist.from_env()
    out.dir.mkdir(parents=True, exist_ok=True)
    s = setup(cfg, data, dist)
    p = resume(s, out.state, log, label)
    has_val = len(data.val_rows) > 0
    while p.epoch < cfg.epochs and not (p.history and has_val and p.epoch - p.best_epoch >= cfg.patience):
        t_epoch = time.perf_counter()
        row, step = train_one_epoch(s, p.epoch, p.step, label)
        if has_val:
            row.update(evaluate(s, data.val_y, data.min_labels))
        row["seconds"] = time.perf_counter() - t_epoch
        score = row[cfg.select_metric] if has_val else p.epoch  # no validation: the last epoch is the best
        better = score > p.best
        p = Progress([*p.history, row], p.epoch + 1, score if better else p.best,
                     p.epoch + 1 if better else p.best_epoch, step)
        if dist.is_main:
            if better:
                save_weights(as_full_net(s.net, s.trained, s.evaluated), out.best_weights)
            checkpoint(s, out.state, p)
            log(f"{label} epoch {p.epoch}/{cfg.epochs} " + " ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k != "epoch") + (" *" if better else ""))
        dist.barrier()
    restore_best(s.net, s.trained, s.evaluated, out.best_weights)
    val_prob = (predict(s.evaluated, s.val_loader, s.to_input, s.device, s.infer_dtype, s.record.tta)
                if has_val else np.zeros((0, data.train_y.shape[1])))
    test_prob = predict(s.evaluated, s.test_loader, s.to_input, s.device, s.infer_dtype, s.record.tta)
    on_gpu = s.device.type == "cuda"
    return FitResult(val_prob, test_prob, p.best_epoch, p.history, out.best_weights, s.source,
                     sum(q.numel() for q in s.net.parameters()),
                     torch.cuda.get_device_name(s.device) if on_gpu else "cpu",
                     (time.time() - t0) / 3600 * dist.world if on_gpu else 0.0, backend=dist.backend,
                     inference=s.record.to_json())
