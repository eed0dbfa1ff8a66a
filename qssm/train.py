"""Seeded training with evaluation every epoch, a cosine schedule, and resume from a checkpoint."""

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import Split
from .io import load_model_files, save_model

# Parameters of the dynamics (SSM A, dt, B; mGRADE delays) train with their own lr and no decay.
DYNAMICS = ("log_dt", "log_A_real", "A_imag", "ssm.B", "A_bar", "B_bar", "conv.delay")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW with three groups: dynamics (ssm_lr, no decay), matrices (lr, decay), rest (lr)."""
    groups = [(cfg.ssm_lr, 0.0, []), (cfg.lr, cfg.weight_decay, []), (cfg.lr, 0.0, [])]
    for name, p in model.named_parameters():
        if p.requires_grad:
            dynamics = any(k in name for k in DYNAMICS)
            groups[0 if dynamics else 1 if p.ndim >= 2 else 2][2].append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd} for lr, wd, ps in groups if ps]
    )


def lr_factor(step: int, total: int, schedule: str) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / max(total, 1))) if schedule == "cosine" else 1.0


@torch.no_grad()
def predict(
    model, split: Split, batch_size: int, mode: str = "parallel"
) -> tuple[torch.Tensor, float]:
    """(predicted labels (N,), mean cross-entropy)."""
    model.eval()
    preds, loss = [], 0.0
    for i in range(0, len(split.y), batch_size):
        logits = model(split.x[i : i + batch_size], mode)
        loss += F.cross_entropy(logits, split.y[i : i + batch_size], reduction="sum").item()
        preds.append(logits.argmax(-1))
    return torch.cat(preds), loss / len(split.y)


def evaluate(model, split: Split, batch_size: int, mode: str = "parallel") -> dict:
    pred, loss = predict(model, split, batch_size, mode)
    return {"accuracy": (pred == split.y).float().mean().item(), "loss": loss}


def _save_state(path: Path, model, opt, epoch: int, history: list) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        tensors.update({f"opt.{idx}.{k}": v for k, v in st.items()})
    meta = {"epoch": epoch, "history": history, "param_groups": opt_state["param_groups"]}
    save_model(path.parent, tensors, meta, path.stem)


def _load_state(path: Path, model, opt) -> tuple[int, list]:
    header, tensors = load_model_files(path.parent, path.stem)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    return header["epoch"], header["history"]


DISTILL_T = 2.0  # temperature of distillation from the float model


def loss_fn(logits, y, teacher=None, weight: float = 0.0):
    """Cross-entropy; with ``teacher`` logits, mixed with weight ``weight`` with the distillation
    loss T²·KL(softmax(teacher / T) ‖ softmax(logits / T)) (Hinton et al. 2015)."""
    ce = F.cross_entropy(logits, y)
    if teacher is None or weight == 0:
        return ce
    kl = F.kl_div(
        F.log_softmax(logits / DISTILL_T, -1),
        F.log_softmax(teacher / DISTILL_T, -1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - weight) * ce + weight * DISTILL_T**2 * kl


def fit(
    model,
    train: Split,
    test: Split,
    cfg,
    *,
    seed: int,
    mode: str = "parallel",
    state_path: Path | None = None,
    eval_batch: int = 256,
    desc: str = "train",
    progress: bool = True,
    teacher: tuple | None = None,
) -> list[dict]:
    """Train ``cfg.epochs`` epochs; after each one evaluate on ``test`` and (if ``state_path``)
    save a resumable checkpoint.  An existing checkpoint at ``state_path`` is resumed from.
    ``teacher`` = (float model, its mode, weight): distill from it (:func:`loss_fn`)."""
    opt = make_optimizer(model, cfg)
    start, history = 0, []
    if state_path is not None and state_path.with_suffix(".json").exists():
        start, history = _load_state(state_path, model, opt)
        tqdm.write(f"{desc}: resuming after epoch {start} from {state_path.with_suffix('.json')}")
    n = len(train.y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for epoch in range(start, cfg.epochs):
        seed_everything(seed * 1009 + epoch)  # same batches whether or not the run was resumed
        order = torch.randperm(n)
        model.train()
        t0 = time.perf_counter()
        label = f"{desc} {epoch + 1}/{cfg.epochs}"
        bar = tqdm(range(steps_per_epoch), label, leave=False, disable=None if progress else True)
        for i in bar:
            factor = lr_factor(epoch * steps_per_epoch + i, total, cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            soft, weight = None, 0.0
            if teacher is not None:
                with torch.no_grad():
                    soft, weight = teacher[0](train.x[idx], teacher[1]), teacher[2]
            loss = loss_fn(model(train.x[idx], mode), train.y[idx], soft, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        seconds = time.perf_counter() - t0
        result = evaluate(model, test, eval_batch, mode)
        history.append(
            {"epoch": epoch + 1, "seconds": seconds, "train_loss": loss.item(), **result}
        )
        tqdm.write(
            f"{desc} epoch {epoch + 1}/{cfg.epochs}: test accuracy "
            f"{result['accuracy']:.4f}, loss {result['loss']:.4f}, {seconds:.1f} s"
        )
        if state_path is not None:
            _save_state(state_path, model, opt, epoch + 1, history)
    return history
