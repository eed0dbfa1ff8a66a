"""The lowered integer graph: ops over named tensors, constants, recurrent states, tensor formats
and the hardware records of the layers a switched-capacitor core can run; ``graph.json`` (all but
the constants) + ``graph.npz`` (the constants, loaded without pickle).  numpy and the standard
library only: the integer reference and the hardware side run without torch."""

import dataclasses
import json
import os
import tempfile
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .ops import OPS, Op, Term

VERSION = 2
ANALOG_BITS = 20  # an unquantized ("analog") state: fixed point with 2^20 steps over its range


class GraphError(ValueError):
    """Graph files that are missing, damaged or written by another version; says to re-export."""


@dataclass
class Format:
    """An integer tensor: real value = centered code × scale; stored code = centered + zp;
    centered codes lie in [lo, hi]."""

    scale: np.ndarray  # float64, broadcastable to the tensor's per-sample shape
    zp: int
    lo: int
    hi: int
    analog: bool = False

    @property
    def bound(self) -> int:
        return max(abs(self.lo), abs(self.hi))


@dataclass
class State:
    """A recurrent tensor (B, *shape) of codes in [lo, hi] (stored with zero point zp), zero at
    the start of a sequence; ``next`` is the tensor that becomes its value at the next step."""

    name: str
    shape: tuple[int, ...]
    zp: int
    lo: int
    hi: int
    next: str = ""


# ---------------------------------------------------------------------- hardware records
# Names of the tensors and constants each analog part of a layer reads and writes, filled in by
# the lowering; the mapping and the simulator read these fields only.


class Adc(NamedTuple):
    """Codes that comparators decide from a MAC's accumulator acc = x @ W:
    out = clip((acc·M + offset + 2^(S−1)) >> S, lo, hi)."""

    out: str  # the codes (B, O)
    x: str  # input codes (B, K)
    W: str  # weight codes (K, O)
    M: str  # integer multiplier of acc, per output (O,) or one
    offset: str  # the op's constant terms (bias, offsets) times their multipliers, int64
    shift: int
    lo: int
    hi: int


class Mac(NamedTuple):
    """An exact accumulator out = x @ W (B, O) of input codes (B, K) and weight codes (K, O)."""

    out: str
    x: str
    W: str


class GatedBank(NamedTuple):
    """The gated state h ← h + z (h̃ − h) in codes: out = (h·keep + z·h·share + z·acc·cand +
    z·cand_offset + 2^(S−1)) >> S, z the gate codes, acc the candidate MAC; the gate's scale is
    −share / keep and h̃ = (acc·cand + cand_offset) / −share."""

    h: str  # the state (B, O)
    out: str  # its next value
    z: str
    acc: str
    keep: str
    share: str
    cand: str
    cand_offset: str
    shift: int


class DelayLine(NamedTuple):
    """mGRADE's delay line in front of a layer: the last input codes ``x`` (B, H) in ``buffer``
    (B, H, J), index j delay j, and the tap convolution out = requantized Σ_j buffer·K, with K
    (H, J) the tap weight codes at their integer delays (zero elsewhere)."""

    x: str
    buffer: str
    K: str
    out: str


class MinGRUHw(NamedTuple):
    """A hardware minGRU layer: gate MAC + ADC, candidate MAC, charge-sharing state bank,
    comparator outputs ``out`` = [h' > 0]; ``line``: the delay line feeding it (``mgrade_hw``)."""

    name: str
    gate: Adc
    cand: Mac
    bank: GatedBank
    out: str
    line: DelayLine | None = None
    kind: str = "mingru_hw"


class Retention(NamedTuple):
    """The S4D-Real state x ← Ā x + B̄ u in codes: out = clip((x·keep + u·write + 2^(S−1)) >> S),
    keep = Ā·2^S (H, n); ``deficit``: the grid step of 1 − Ā per channel (H,) or one, the unit of
    the retention bank (None: Ā is not quantized on that grid)."""

    x: str
    out: str
    keep: str
    u: str  # (B, H, 1)
    write: str
    shift: int
    deficit: str | None


class Readout(NamedTuple):
    """y = clip((Σ_n x·C · M + u·skip + 2^(S−1)) >> S, lo, hi): the readout MAC over the state
    x (B, H, n) with weights C (H, n), plus the skip term D·u."""

    out: str
    x: str
    C: str
    M: str
    u: str  # (B, H)
    skip: str
    shift: int
    lo: int
    hi: int


class S4DRealHw(NamedTuple):
    """An S4D-Real layer: the retention bank of the state and the readout MAC + ADC."""

    name: str
    retention: Retention
    readout: Readout
    kind: str = "s4d_real"


RECORDS = {cls._field_defaults["kind"]: cls for cls in (MinGRUHw, S4DRealHw)}
Record = MinGRUHw | S4DRealHw


@dataclass
class Graph:
    """``step`` runs once per timestep (input tensor ``x`` (B, d_input) float32), ``head`` once
    after the last step (→ ``logits`` (B, n_classes) float64); ``output`` is the last block's
    output tensor."""

    family: str
    d_input: int
    n_classes: int
    output: str
    states: list[State]
    step: list[Op]
    head: list[Op]
    consts: dict[str, np.ndarray]
    formats: dict[str, Format]
    layers: list[Record] = field(default_factory=list)


# ---------------------------------------------------------------------- files


@contextmanager
def atomic_path(path: Path):
    """A temp name beside ``path``, renamed onto it only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _jsonable(obj):
    if isinstance(obj, Op):
        return {"op": obj.kind, **_jsonable(vars(obj))}
    if hasattr(obj, "_asdict") and not isinstance(obj, Term):  # a record
        obj = obj._asdict()
    elif dataclasses.is_dataclass(obj):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj.tolist() if isinstance(obj, (np.ndarray, np.generic)) else obj


def _op(d: dict) -> Op:
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # JSON lists: tuples
    if "terms" in d:
        d["terms"] = tuple(Term(k, tuple(i), w) for k, i, w in d["terms"])
    return OPS[d.pop("op")](**d)


def _record(cls, d: dict):
    if typing.get_origin(cls) in (typing.Union, types.UnionType):  # an optional record
        cls = next(c for c in typing.get_args(cls) if c is not type(None))
    hints = typing.get_type_hints(cls)
    return cls(**{k: _record(hints[k], v) if isinstance(v, dict) else v for k, v in d.items()})


def save_graph(graph: Graph, out: Path) -> None:
    """``graph.json`` + ``graph.npz`` in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "graph.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **graph.consts)
    doc = {"version": VERSION, **_jsonable({k: v for k, v in vars(graph).items() if k != "consts"})}
    with atomic_path(out / "graph.json") as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")


def load_graph(path: Path) -> Graph:
    try:
        doc = json.loads((path / "graph.json").read_text())
        if doc.get("version") != VERSION:
            raise ValueError(f"graph format {doc.get('version', 1)}, this qssm reads {VERSION}")
        with np.load(path / "graph.npz", allow_pickle=False) as z:
            consts = {k: z[k] for k in z.files}
        return Graph(
            **{k: doc[k] for k in ("family", "d_input", "n_classes", "output")},
            states=[State(**{**s, "shape": tuple(s["shape"])}) for s in doc["states"]],
            **{part: [_op(op) for op in doc[part]] for part in ("step", "head")},
            consts=consts,
            formats={
                k: Format(**{**f, "scale": np.asarray(f["scale"])})
                for k, f in doc["formats"].items()
            },
            layers=[_record(RECORDS[r["kind"]], r) for r in doc["layers"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GraphError(
            f"{path}: not a lowered graph ({err}); run `qssm export RUN_DIR` again"
        ) from None
