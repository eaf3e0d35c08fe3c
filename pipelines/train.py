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
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

from competition import metrics
from competition.artifacts import atomic_path
from pipelines.augment import eval_transform, train_transform
from pipelines.data import CachedImages, DeviceNormalize, auto_workers, make_loader
from pipelines.distributed import Dist
from pipelines.losses import build_loss
from pipelines.model import build_model
from pipelines.trunk import TopOfNet, TrunkFeatures, trunk_cache


@dataclasses.dataclass
class FoldData:
    """What one fit needs: cache rows and targets for train/val/test. val may be empty (full fit)."""
    cache: Path
    train_rows: np.ndarray
    train_y: np.ndarray
    val_rows: np.ndarray
    val_y: np.ndarray
    test_rows: np.ndarray


@dataclasses.dataclass
class FitResult:
    val_prob: np.ndarray
    test_prob: np.ndarray
    best_epoch: int
    history: list
    weights: Path
    source: str
    params: int
    device: str = "cpu"
    gpu_hours: float = 0.0


def device_setup(cfg: dict, dist: Dist):
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    amp_dtype = None
    if device.type == "cuda" and cfg["amp"]:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, amp_dtype


def autocast(device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


def make_schedule(cfg, optimizer, updates_per_epoch):
    """A callable step(global_step) -> None, and its state for resuming."""
    total = cfg["epochs"] * updates_per_epoch
    if cfg["schedule"] == "cosine":
        sched, _ = create_scheduler_v2(
            optimizer, sched="cosine", num_epochs=cfg["epochs"], warmup_epochs=cfg["warmup_epochs"],
            warmup_lr=cfg["lr"] * 0.01, min_lr=cfg["min_lr"], step_on_epochs=False,
            updates_per_epoch=updates_per_epoch)
        return lambda step: sched.step_update(step), None
    if cfg["schedule"] == "onecycle":
        pct = min(max(cfg["warmup_epochs"] / max(cfg["epochs"], 1), 0.05), 0.5)
        sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=total + 1, pct_start=pct)
        return (lambda step: sched.step()), sched
    if cfg["schedule"] == "none":
        return (lambda step: None), None
    raise KeyError(f"unknown schedule {cfg['schedule']!r}; valid: cosine, onecycle, none")


@torch.no_grad()
def predict(model, loader, normalize, device, amp_dtype, tta: bool) -> np.ndarray:
    model.eval()
    out = []
    for x, _ in loader:
        x = normalize(x)
        # Trunk features arrive as (batch, 2 views, C, H, W): the mirror view is precomputed.
        views = (x[:, 0], x[:, 1]) if x.dim() == 5 else (x, torch.flip(x, dims=[3]))
        with autocast(device, amp_dtype):
            prob = torch.sigmoid(model(views[0]).float())
            if tta:
                prob = (prob + torch.sigmoid(model(views[1]).float())) / 2
        out.append(prob.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def inputs(cfg, data: FoldData, net, mean, std, device, channels_last):
    """Datasets and the module that trains: the whole net on images, or its top on cached trunk features."""
    size = cfg["img_size"]
    if cfg["train_from"] is None:
        normalize = DeviceNormalize(mean, std, device, channels_last)
        return (CachedImages(data.cache, data.train_rows, data.train_y, train_transform(cfg["augment"], size)),
                CachedImages(data.cache, data.val_rows, None, eval_transform(size)),
                CachedImages(data.cache, data.test_rows, None, eval_transform(size)), net, normalize)
    start = cfg["train_from"]
    top = TopOfNet(net, start)
    features = trunk_cache(net, start, data.cache, mean, std, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def to_device(x):
        x = x.to(device, non_blocking=True)
        return x if x.dim() == 5 else x.contiguous(memory_format=fmt)
    return (TrunkFeatures(features, data.train_rows, data.train_y, train=True, seed=cfg["seed"]),
            TrunkFeatures(features, data.val_rows), TrunkFeatures(features, data.test_rows), top, to_device)


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


def save_weights(model, path: Path) -> None:
    """fp16 safetensors: half the bytes, and loading it can run no code."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model, path: Path) -> None:
    state = load_file(str(path))
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()}, strict=True)


def save_state(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@dataclasses.dataclass
class Setup:
    """Everything a training run holds: built once by `setup`, used by `fit` and the benchmark."""
    cfg: dict
    dist: Dist
    device: torch.device
    amp_dtype: torch.dtype | None
    net: torch.nn.Module        # the whole network (what is saved)
    model: torch.nn.Module      # what trains: the net, or its top on cached trunk features
    source: str
    normalize: object
    sampler: object
    train_loader: object
    val_loader: object
    test_loader: object
    updates: int
    optimizer: object
    step_schedule: object
    sched_state: object
    loss_fn: torch.nn.Module
    scaler: object
    ema: object
    train_model: torch.nn.Module


def setup(cfg: dict, data: FoldData, dist: Dist) -> Setup:
    torch.manual_seed(cfg["seed"])
    device, amp_dtype = device_setup(cfg, dist)
    net, source, mean, std = build_model(cfg, data.train_y.shape[1])
    channels_last = cfg["channels_last"]  # also ~1.3x faster for these convnets on CPU
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    workers = auto_workers(cfg["workers"], device)
    train_ds, val_ds, test_ds, model, normalize = inputs(cfg, data, net, mean, std, device, channels_last)
    sampler = dist.sampler(train_ds, cfg["seed"])
    train_loader = make_loader(train_ds, cfg["batch_size"], True, workers, device,
                               drop_last=len(train_ds) > cfg["batch_size"], sampler=sampler, seed=cfg["seed"])
    eval_bs = cfg["batch_size"] * 2
    updates = len(train_loader) if cfg["max_train_batches"] is None else min(len(train_loader), cfg["max_train_batches"])
    optimizer = create_optimizer_v2(model.trainable(), opt=cfg["optimizer"], lr=cfg["lr"],
                                    weight_decay=cfg["weight_decay"], momentum=cfg["momentum"])
    step_schedule, sched_state = make_schedule(cfg, optimizer, updates)
    return Setup(
        cfg, dist, device, amp_dtype, net, model, source, normalize, sampler, train_loader,
        make_loader(val_ds, eval_bs, False, workers, device), make_loader(test_ds, eval_bs, False, workers, device),
        updates, optimizer, step_schedule, sched_state, build_loss(cfg["loss"], data.train_y).to(device),
        torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True) if cfg["ema"] else None,
        dist.wrap(torch.compile(model) if cfg["compile"] else model))


def train_step(s: Setup, x, y) -> torch.Tensor:
    """One optimisation step on a batch from the loader (uint8 images or trunk features)."""
    x, y = s.normalize(x), y.to(s.device, non_blocking=True)
    with autocast(s.device, s.amp_dtype):
        loss = s.loss_fn(s.train_model(x).float(), y)
    s.optimizer.zero_grad(set_to_none=True)
    if s.scaler is not None:
        s.scaler.scale(loss).backward()
        s.scaler.unscale_(s.optimizer)
    else:
        loss.backward()
    if s.cfg["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg["grad_clip"])
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    return loss


def resume(s: Setup, state_path: Path, log, label):
    """(history, next epoch, best score, best epoch, global step) from the last finished epoch."""
    if not state_path.exists():
        return [], 0, -np.inf, 0, 0
    st = torch.load(state_path, map_location=s.device, weights_only=False)
    s.model.load_state_dict(st["model"])
    s.optimizer.load_state_dict(st["optimizer"])
    if s.ema is not None:
        s.ema.load_state_dict(st["ema"])
    if s.sched_state is not None:
        s.sched_state.load_state_dict(st["scheduler"])
    if s.scaler is not None and st.get("scaler"):
        s.scaler.load_state_dict(st["scaler"])
    torch.set_rng_state(st["rng"])
    log(f"{label}: resuming after epoch {st['epoch']}")
    return st["history"], st["epoch"], st["best"], st["best_epoch"], st["step"]


def fit(cfg: dict, data: FoldData, out_dir: Path, label: str, dist: Dist | None = None, log=print) -> FitResult:
    """Train, keep the best epoch (or the last when there is no validation), predict val+test with TTA."""
    dist = dist or Dist.from_env()
    out_dir.mkdir(parents=True, exist_ok=True)
    s = setup(cfg, data, dist)
    state_path, best_path = out_dir / "state.pt", out_dir / "best.safetensors"
    history, start, best, best_epoch, step = resume(s, state_path, log, label)
    evaluated = s.ema.module if s.ema is not None else s.model
    has_val = len(data.val_rows) > 0
    epochs = cfg["epochs"]

    for epoch in range(start, epochs):
        if history and has_val and epoch - best_epoch >= cfg["patience"]:
            break
        t0 = time.time()
        if s.sampler is not None:
            s.sampler.set_epoch(epoch)
        s.train_model.train()
        losses, seen = [], 0
        bar = tqdm(s.train_loader, total=s.updates, desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not (dist.is_main and sys.stderr.isatty()), mininterval=1)  # logs get the epoch line
        for i, (x, y) in enumerate(bar):
            if i >= s.updates:
                break
            s.step_schedule(step)
            loss = train_step(s, x, y)
            step += 1
            if s.ema is not None:
                s.ema.update(s.model, step=step)
            losses.append(loss.item())
            seen += len(x)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", ips=f"{seen / (time.time() - t0):.0f}", refresh=False)
        train_seconds = time.time() - t0
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": s.optimizer.param_groups[0]["lr"],
               "images_per_s": seen * dist.world / train_seconds}
        if has_val:
            prob = predict(evaluated, s.val_loader, s.normalize, s.device, s.amp_dtype, tta=False)
            row["val_loss"] = float(torch.nn.functional.binary_cross_entropy(
                torch.from_numpy(prob).double().clamp(1e-7, 1 - 1e-7), torch.from_numpy(data.val_y).double()))
            row.update({m: metrics.summary(data.val_y, prob)[m] for m in ("micro_f1", "macro_f1", "mAP")})
        row["seconds"] = time.time() - t0
        history.append(row)
        score = row[cfg["select_metric"]] if has_val else epoch
        if score > best:
            best, best_epoch = score, epoch + 1
            if dist.is_main:
                save_weights(as_full_net(s.net, s.model, evaluated), best_path)
        if dist.is_main:
            save_state(state_path, model=s.model.state_dict(), optimizer=s.optimizer.state_dict(),
                       ema=s.ema.state_dict() if s.ema is not None else None,
                       scheduler=s.sched_state.state_dict() if s.sched_state is not None else None,
                       scaler=s.scaler.state_dict() if s.scaler is not None else None, rng=torch.get_rng_state(),
                       history=history, epoch=epoch + 1, best=best, best_epoch=best_epoch, step=step)
            log(f"{label} epoch {epoch + 1}/{epochs} " + " ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k != "epoch") + (" *" if best_epoch == epoch + 1 else ""))
        dist.barrier()

    restore_best(s.net, s.model, evaluated, best_path)
    n_labels = data.train_y.shape[1]
    val_prob = (predict(evaluated, s.val_loader, s.normalize, s.device, s.amp_dtype, cfg["tta"])
                if has_val else np.zeros((0, n_labels)))
    test_prob = predict(evaluated, s.test_loader, s.normalize, s.device, s.amp_dtype, cfg["tta"])
    return FitResult(val_prob, test_prob, best_epoch, history, best_path, s.source,
                     sum(p.numel() for p in s.net.parameters()))
