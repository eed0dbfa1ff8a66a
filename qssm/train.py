"""Seeded training with evaluation every epoch, a cosine schedule, a divergence guard, and an
exact resume from the checkpoint of the last finished epoch."""

import ctypes
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import Split
from .io import load_checkpoint, save_checkpoint

# Parameters of the dynamics (SSM A, dt, B; mGRADE delays) train with their own lr and no decay.
DYNAMICS = ("log_dt", "log_A_real", "A_imag", "ssm.B", "A_bar", "B_bar", "conv.delay")


# glibc's malloc options (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD and its largest value
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_MAX = -1, -3, 32 * 2**20


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step.

    torch has no caching allocator on the CPU: every (B, L, H) activation and gradient of a
    step is a fresh malloc of megabytes, which glibc serves with mmap and returns to the system
    when freed, so the next step takes a page fault for every 4 KiB it writes — up to a third
    of a minGRU QAT step on a virtual machine (docs/performance.md).  Serving blocks under
    32 MiB from the heap and never trimming the heap's top below 1 GiB keeps them mapped; the
    memory is not handed back between steps, so the peak resident memory grows a little (the
    S4D QAT bench: 0.76 → 0.89 GiB).  Process-wide and idempotent; returns False (changing
    nothing) where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))


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


class Diverged(RuntimeError):
    """A non-finite loss or parameter during training (exit status 3); the message names the
    stage, epoch and step and the recipe keys to change."""


def _save_state(path: Path, model, opt, epoch: int, history: list) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        tensors.update({f"opt.{idx}.{k}": v for k, v in st.items()})
    meta = {"epoch": epoch, "history": history, "param_groups": opt_state["param_groups"]}
    save_checkpoint(path, tensors, meta)


def _opt_state(header: dict, tensors: dict) -> dict:
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": header["param_groups"]}


def _kept(path: Path, epoch: int) -> str:
    return f"; the checkpoint of epoch {epoch} is kept in {path}" if epoch else "; nothing saved"


def _check_finite(model, loss: float, where: str, cfg, section: str, kept: str) -> None:
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if math.isfinite(loss) and not bad:
        return
    what = f"parameter {bad[0]} is not finite" if bad else f"the loss is {loss}"
    clip = (
        f"set {section}.grad_clip (e.g. 1.0)"
        if cfg.grad_clip is None
        else f"lower {section}.grad_clip (now {cfg.grad_clip:g})"
    )
    raise Diverged(f"{where}: {what}; lower {section}.lr (now {cfg.lr:g}) or {clip}{kept}")


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
    section: str = "float",
) -> list[dict]:
    """Train ``cfg.epochs`` epochs; after each one evaluate on ``test`` and (if ``state_path``)
    save a resumable checkpoint ``state_path`` (model, optimizer, epoch, history; one file).  An
    existing checkpoint there is resumed from, with the same result as a run never interrupted.
    ``teacher`` = (float model, its mode, weight): distill from it (:func:`loss_fn`).  A
    non-finite loss or parameter raises :class:`Diverged` (``section``: the recipe section of
    ``cfg``, named in its message) before the epoch's checkpoint is written."""
    keep_freed_memory()
    start, history, header = 0, [], None
    if state_path is not None and state_path.exists():
        header, tensors = load_checkpoint(state_path)
        # the model first: Brevitas re-creates its scale parameters when a state dict is loaded,
        # and an optimizer made before that would train the discarded ones
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        start, history = header["epoch"], header["history"]
        tqdm.write(f"{desc}: resuming after epoch {start} from {state_path}")
    opt = make_optimizer(model, cfg)
    if header is not None:
        opt.load_state_dict(_opt_state(header, tensors))
    kept = "" if state_path is None else _kept(state_path, start)
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
            where = f"{desc} diverged at epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{len(bar)}"
            if not math.isfinite(loss.item()):
                _check_finite(model, loss.item(), where, cfg, section, kept)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        seconds = time.perf_counter() - t0
        _check_finite(model, loss.item(), where, cfg, section, kept)
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
            kept = _kept(state_path, epoch + 1)
    return history
