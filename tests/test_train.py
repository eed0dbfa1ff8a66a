import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from qssm import train
from qssm.data import load_dataset
from qssm.models.backbone import Classifier
from qssm.recipe import FloatConfig
from qssm.train import DISTILL_T, loss_fn

MODEL = dict(
    family="s4d",
    d_model=8,
    n_layers=1,
    pool="mean",
    d_state=8,
    init="lin",
    dt_min=1e-3,
    dt_max=1e-1,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("sdigits", seed=0, limit_train=256, limit_test=128)


def _model(data):
    torch.manual_seed(0)
    return Classifier(MODEL, data.d_input, data.n_classes)


def test_training_is_deterministic_and_resumes_exactly(digits, tmp_path, monkeypatch):
    cfg = FloatConfig(epochs=2, batch_size=32, lr=0.01)
    full = _model(digits)
    train.fit(full, digits.train, digits.test, cfg, seed=3, progress=False)

    again = _model(digits)
    train.fit(again, digits.train, digits.test, cfg, seed=3, progress=False)
    for a, b in zip(full.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)

    real_evaluate, calls = train.evaluate, []

    def crash_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_on_second_epoch)
    state = tmp_path / "train_state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train.fit(
            _model(digits), digits.train, digits.test, cfg, seed=3, state_path=state, progress=False
        )
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    resumed = _model(digits)
    history = train.fit(
        resumed, digits.train, digits.test, cfg, seed=3, state_path=state, progress=False
    )
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_learns_something():
    digits = load_dataset("sdigits", seed=0)
    torch.manual_seed(0)
    cfg = {**MODEL, "d_model": 16, "d_state": 16, "dt_min": 0.01, "dt_max": 0.5}
    model = Classifier(cfg, digits.d_input, digits.n_classes)
    before = train.evaluate(model, digits.test, 256)["accuracy"]
    train.fit(
        model,
        digits.train,
        digits.test,
        FloatConfig(epochs=4, batch_size=32, ssm_lr=0.01),
        seed=0,
        progress=False,
    )
    after = train.evaluate(model, digits.test, 256)["accuracy"]
    assert after > max(before + 0.2, 0.4)


def test_cosine_schedule():
    assert train.lr_factor(0, 10, "cosine") == 1.0
    assert abs(train.lr_factor(5, 10, "cosine") - 0.5) < 1e-12
    assert train.lr_factor(10, 10, "cosine") < 1e-12
    assert train.lr_factor(7, 10, "constant") == 1.0


def test_distillation_loss_against_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    ce = F.cross_entropy(logits, y)
    assert torch.equal(loss_fn(logits, y), ce)
    assert torch.equal(loss_fn(logits, y, logits.flip(-1), 0.0), ce)
    # a teacher that agrees with the student adds nothing: KL = 0
    torch.testing.assert_close(loss_fn(logits, y, logits.clone(), 0.25), 0.75 * ce)
    # one sample, uniform teacher: T²·KL(u ‖ softmax(s/T)) = T²·(−log 3 − mean log softmax(s/T))
    s, t = logits[:1], torch.zeros(1, 3)
    p = torch.log_softmax(s / DISTILL_T, -1)
    kl = DISTILL_T**2 * (-torch.log(torch.tensor(3.0)) - p.mean())
    torch.testing.assert_close(loss_fn(s, y[:1], t, 1.0), kl)


HEAP = """
import ctypes, sys, torch
from qssm import train
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert train.keep_freed_memory()
before = libc.mallinfo2()
t = torch.empty(2**22)  # 16 MiB
during = libc.mallinfo2()
del t
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, after.fordblks - before.fordblks)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_keep_freed_memory_keeps_a_freed_tensor_in_the_heap():
    """glibc's own accounting (mallinfo2) of a 16 MiB tensor: with keep_freed_memory it comes
    from the heap and its 16 MiB stay there, free, once it is deleted; without, it is mapped
    on its own and unmapped again (fresh processes: the setting is process-wide)."""

    def run(mode: str) -> tuple[int, int]:
        cmd = [sys.executable, "-c", HEAP, mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        mapped, freed = map(int, out.split())
        return mapped, freed

    mapped, freed = run("keep")
    assert mapped == 0 and freed > 2**24 * 0.9  # (a few small blocks may take some of it)
    mapped, freed = run("default")
    assert mapped >= 2**24 and freed < 2**16
