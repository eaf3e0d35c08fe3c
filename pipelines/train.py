"""One fold of one image backbone: a plain loop with EMA, early stopping and per-epoch resume."""
from __future__ import annotations

import contextlib
import dataclasses
import os
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
        with autocast(device, amp_dtype):
            logits = model(x).float()
            prob = torch.sigmoid(logits)
            if tta:
                prob = (prob + torch.sigmoid(model(torch.flip(x, dims=[3])).float())) / 2
        out.append(prob.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


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


def fit(cfg: dict, data: FoldData, out_dir: Path, label: str, epochs: int | None = None,
        dist: Dist | None = None, log=print) -> FitResult:
    """Train, keep the best epoch (or the last when there is no validation), predict val+test with TTA."""
    dist = dist or Dist.from_env()
    epochs = epochs or cfg["epochs"]
    cfg = {**cfg, "epochs": epochs}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    device, amp_dtype = device_setup(cfg, dist)
    num_classes = data.train_y.shape[1]
    model, source, mean, std = build_model(cfg, num_classes)
    channels_last = device.type == "cuda" and cfg["channels_last"]
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    normalize = DeviceNormalize(mean, std, device, channels_last)
    size = cfg["img_size"]
    workers = auto_workers(cfg["workers"], device)
    train_ds = CachedImages(data.cache, data.train_rows, data.train_y, train_transform(cfg["augment"], size))
    sampler = dist.sampler(train_ds, cfg["seed"])
    train_loader = make_loader(train_ds, cfg["batch_size"], True, workers, device, drop_last=len(train_ds) > cfg["batch_size"],
                               sampler=sampler, seed=cfg["seed"])
    eval_bs = cfg["batch_size"] * 2
    val_loader = make_loader(CachedImages(data.cache, data.val_rows, None, eval_transform(size)), eval_bs, False, workers, device)
    updates = len(train_loader) if cfg["max_train_batches"] is None else min(len(train_loader), cfg["max_train_batches"])
    optimizer = create_optimizer_v2(model.trainable(), opt=cfg["optimizer"], lr=cfg["lr"],
                                    weight_decay=cfg["weight_decay"], momentum=cfg["momentum"])
    step_schedule, sched_state = make_schedule(cfg, optimizer, updates)
    loss_fn = build_loss(cfg["loss"], data.train_y).to(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True) if cfg["ema"] else None
    train_model = dist.wrap(torch.compile(model) if cfg["compile"] else model)

    state_path, best_path = out_dir / "state.pt", out_dir / "best.safetensors"
    history, start, best, best_epoch, step = [], 0, -np.inf, 0, 0
    if state_path.exists():  # resume the last finished epoch
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
        if sched_state is not None:
            sched_state.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng"])
        history, start, best, best_epoch, step = st["history"], st["epoch"], st["best"], st["best_epoch"], st["step"]
        log(f"{label}: resuming after epoch {start}")
    evaluated = ema.module if ema is not None else model
    has_val = len(data.val_rows) > 0

    for epoch in range(start, epochs):
        if history and has_val and epoch - best_epoch >= cfg["patience"]:
            break
        t0 = time.time()
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_model.train()
        losses, seen = [], 0
        bar = tqdm(train_loader, total=updates, desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not dist.is_main or None, mininterval=1)
        for i, (x, y) in enumerate(bar):
            if i >= updates:
                break
            step_schedule(step)
            x, y = normalize(x), y.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                loss = loss_fn(train_model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            (scaler.step(optimizer), scaler.update()) if scaler is not None else optimizer.step()
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            losses.append(loss.item())
            seen += len(x)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", ips=f"{seen / (time.time() - t0):.0f}")
        train_seconds = time.time() - t0
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"],
               "images_per_s": seen * dist.world / train_seconds}
        if has_val:
            prob = predict(evaluated, val_loader, normalize, device, amp_dtype, tta=False)
            with torch.no_grad():
                row["val_loss"] = float(torch.nn.functional.binary_cross_entropy(
                    torch.from_numpy(prob).clamp(1e-7, 1 - 1e-7), torch.from_numpy(data.val_y.astype(np.float32))))
            row.update({m: metrics.summary(data.val_y, prob)[m] for m in ("micro_f1", "macro_f1", "mAP")})
        row["seconds"] = time.time() - t0
        history.append(row)
        score = row[cfg["select_metric"]] if has_val else epoch
        if score > best:
            best, best_epoch = score, epoch + 1
            if dist.is_main:
                save_weights(evaluated, best_path)
        if dist.is_main:
            save_state(state_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       ema=ema.state_dict() if ema is not None else None,
                       scheduler=sched_state.state_dict() if sched_state is not None else None,
                       scaler=scaler.state_dict() if scaler is not None else None, rng=torch.get_rng_state(),
                       history=history, epoch=epoch + 1, best=best, best_epoch=best_epoch, step=step)
            log(f"{label} epoch {epoch + 1}/{epochs} " + " ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k != "epoch") + (" *" if best_epoch == epoch + 1 else ""))
        dist.barrier()

    load_weights(evaluated, best_path)
    test_loader = make_loader(CachedImages(data.cache, data.test_rows, None, eval_transform(size)), eval_bs, False, workers, device)
    val_prob = predict(evaluated, val_loader, normalize, device, amp_dtype, cfg["tta"]) if has_val else np.zeros((0, num_classes))
    test_prob = predict(evaluated, test_loader, normalize, device, amp_dtype, cfg["tta"])
    return FitResult(val_prob, test_prob, best_epoch, history, best_path, source,
                     sum(p.numel() for p in model.parameters()))
