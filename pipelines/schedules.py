"""Learning-rate schedules by name: the table's keys are the one list of `schedule` values (the config checks
against it). Each entry makes (step(global_step) -> None, its state for resuming or None)."""
from __future__ import annotations

import torch
from timm.scheduler import create_scheduler_v2


def cosine_schedule(cfg, optimizer, updates_per_epoch):
    sched, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.lr * 0.01, min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return (lambda step: sched.step_update(step)), None


def onecycle_schedule(cfg, optimizer, updates_per_epoch):
    # Both phases at least one step long: OneCycleLR divides by their lengths (a 1-epoch, 1-batch run broke it).
    total = max(cfg.epochs * updates_per_epoch + 1, 4)
    pct = min(max(cfg.warmup_epochs / cfg.epochs, 0.05, 2 / total), 0.5)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    return (lambda step: sched.step()), sched


SCHEDULES = {"cosine": cosine_schedule, "onecycle": onecycle_schedule,
             "none": lambda cfg, optimizer, updates: ((lambda step: None), None)}


def make_schedule(cfg, optimizer, updates_per_epoch):
    """A callable step(global_step) -> None, and its state for resuming."""
    return SCHEDULES[cfg.schedule](cfg, optimizer, updates_per_epoch)
