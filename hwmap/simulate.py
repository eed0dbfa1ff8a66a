"""Behavioural simulator of a mapped model on a switched-capacitor target, with switchable
non-idealities and many chips at once (the chip axis is folded into the batch).

It executes the lowered integer graph; the tensors of each layer's hardware record (the analog
core the mapping placed) are computed in volts by their charge-domain versions instead — with
every effect off too, so the agreement with the integer reference is a result, not a construction.

Hardware minGRU, per timestep and column:

- gate and candidate MACs: V = g·v_u·Σ_j x_j·(units⁺_jo − units⁻_jo) with the chip's own unit
  capacitors (``mismatch``: each unit C_u(1 + ε), σ_ε = capacitor.mismatch), g = C_line /
  C_line,chip the gain of the line's parasitic spread (``parasitic``: one global draw per chip and
  a small local one per column; the gate ADC's references come from a replica line, so its
  thresholds follow the global part and only the local one is an error), kT/C of the line
  (``ktc``), charge injection (``injection``); a
  line is clipped at the rails (±V_swing around V_cm, ``clipping``); the candidate's bias is a
  charge on its line.
- gate ADC: the thresholds come out of a threshold DAC (``dac``: its quantization over the
  column's span); a SAR compares with one comparator in a binary search (its offset), a flash
  with one comparator per threshold (an offset each, and the ``kickback`` of the comparators
  that resolve first onto the line the others still read); either code counts the thresholds
  the line passes.  A SAR's comparator is reset between decisions and the output comparator
  before the bank shares again, so the charge they kick onto a floating node flows back.
  Offsets (``offset``) are drawn raw and corrected as the target's calibration does (trim DAC,
  foreground measurement through the threshold DAC, auto-zero); noise (``noise``) per
  conversion.
- state bank: k gate units sample the candidate line and share with the bank holding h:
  h ← h + z_k (h̃ − h), z_k = Σ_{i<k} C_i / (Σ C + C_p) from the chip's own units (``mismatch``)
  and the part of the node's parasitic the remainder capacitor could not absorb, with its
  spread (``parasitic``); kT/C of the sampling (``ktc``), injection, ``leakage`` I·t/C(T), rail
  clipping.
- output comparator: h + offset + noise > 0, enabled by its column's latch once the gate has
  switched a unit (see ``hwmap.mapping``).

S4D-Real: retention through the chip's bank units, its readout MAC and output ADC errors in
state / accumulator units as before (with every bank effect off its state update is the integer
op).

Noise comes from a pool of pre-drawn normals read at random offsets (a draw per tensor per step
is the bottleneck otherwise).  Static draws depend only on the chip's seed, so chip s is the
same chip in every batch.
"""

import dataclasses
from functools import cache, partial

import numpy as np

from .graph import DelayLine, Graph, MinGRUHw
from .intref import Numpy, head
from .mapping import BOLTZMANN, dac_code, unit_sigma
from .ops import Affine, Term
from .targets import Comparator, Target, leak_fraction, swing, trim_step_mv

NONIDEALITIES = tuple(
    "mismatch parasitic ktc offset noise dac kickback injection leakage clipping".split()
)
BANK_ERRORS = {"mismatch", "ktc", "injection", "leakage", "clipping"}  # S4D-Real's bank
POOL = 1 << 22  # pre-drawn normals
CHUNK_ROWS = 8192  # sequences × steps of the chip-invariant input side computed at once


def offset_draw(rng, c: Comparator, shape) -> tuple[np.ndarray, np.ndarray]:
    """Raw offsets after the target's calibration (volts): (the offset the comparator keeps,
    the correction subtracted from its threshold-DAC codes).  See ``residual_offset_mv``."""
    raw = rng.normal(0, c.offset_mv * 1e-3, shape)
    none = np.zeros(shape)
    if c.calibration == "trim":  # a trim DAC over ±3σ: the residual of the nearest code
        step, half = trim_step_mv(c) * 1e-3, 2 ** (c.trim_bits - 1)
        return raw - step * np.clip(np.rint(raw / step), -half, half - 1), none
    if c.calibration == "autozero":
        return raw / (1 + c.autozero_gain), none
    if c.calibration == "foreground":  # measured with n noisy decisions, corrected by the DAC
        error = rng.normal(0, c.noise_mv * 1e-3 / np.sqrt(c.calibration_samples), shape)
        return raw, raw + error
    return raw, none


@cache
def _kernels():
    """numba kernels of the per-step hot loops (one pass over the chips × batch × columns
    elements, no temporaries; float32 arithmetic in the order the numpy expressions they replace
    take, so the results are the same to the bit)."""
    import numba

    @numba.njit(cache=True)
    def gate(units, per_unit, gain, ktc_sigma, ktc, inject, rail, sigma, noise, theta, kick, lo):
        """The gate ADC's codes ``lo`` + c (S, B, O) from its MAC's accumulators: the line in
        volts (× ``per_unit`` and the column's ``gain`` (S, O), kT/C, injection; empty arrays,
        zero: off), clipped at the rails (``rail`` ≤ 0: off), the comparator's noise,
        then the count c = #{θ ≤ v} of its chip's and column's sorted thresholds θ (S, O, P),
        padded with +inf to P = 2^n ≥ 64 — what a SAR's binary search or a flash's
        thermometer code gives — by a binary search without branches (each level adds its
        step where θ[c + step − 1] ≤ v; the levels up to 32 unrolled).  With a ``kick``
        (T+1,) (a flash's kickback: the line's move for each first count) counted again on
        the moved line.  (One body: numba calls with array arguments, inlined or not, cost
        more than the work — hence the MAC-line prefix written out here and in ``line``.)"""
        chips, batch, cols = units.shape
        top = theta.shape[2] // 2
        codes = np.empty(units.shape, dtype=np.int64)
        for s in range(chips):
            for b in range(batch):
                for o in range(cols):
                    x = units[s, b, o] * per_unit
                    if gain.size:
                        x *= gain[s, o]
                    if ktc.size:
                        x += ktc_sigma * ktc[s, b, o]
                    if inject != 0:
                        x += inject
                    if rail > 0:
                        x = min(max(x, -rail), rail)
                    if noise.size:
                        x += sigma * noise[s, b, o]
                    c = 0
                    for again in range(2 if kick.size else 1):
                        if again:
                            x += kick[c]
                        c, step = 0, top
                        while step > 32:
                            c += step if theta[s, o, c + step - 1] <= x else 0
                            step >>= 1
                        c += 32 if theta[s, o, c + 31] <= x else 0
                        c += 16 if theta[s, o, c + 15] <= x else 0
                        c += 8 if theta[s, o, c + 7] <= x else 0
                        c += 4 if theta[s, o, c + 3] <= x else 0
                        c += 2 if theta[s, o, c + 1] <= x else 0
                        c += 1 if theta[s, o, c] <= x else 0
                    codes[s, b, o] = lo + c
        return codes

    @numba.njit(cache=True)
    def share(h, cand, k, z, sigma, noise, inject, keep, rail, armed):
        """The gated state h + z_k (h̃ − h) per element (S, B, O) with z (S, O, K+1), then the
        k sampled units' kT/C (``sigma`` (O, K+1) volts per unit of ``noise``; empty: off),
        injection where k > 0, leakage (× ``keep``) and the rails (``rail`` ≤ 0: off); sets
        the column's enable latch (``armed``, in place) where k > 0."""
        chips, batch, cols = h.shape
        out = np.empty_like(h)
        for s in range(chips):
            for b in range(batch):
                for o in range(cols):
                    g = k[s, b, o]
                    armed[s, b, o] |= g > 0
                    x = (cand[s, b, o] - h[s, b, o]) * z[s, o, g] + h[s, b, o]
                    if sigma.size:
                        x += sigma[o, g] * noise[s, b, o]
                    if g > 0:
                        x += inject
                    x *= keep
                    if rail > 0:
                        x = min(max(x, -rail), rail)
                    out[s, b, o] = x
        return out

    @numba.njit(cache=True)
    def line(units, per_unit, gain, ktc_sigma, ktc, inject, bias, rail):
        """A candidate line (S, B, O) in volts, in place: as ``gate`` does, then its ``bias``
        (O,) charge and the rails."""
        chips, batch, cols = units.shape
        for s in range(chips):
            for b in range(batch):
                for o in range(cols):
                    x = units[s, b, o] * per_unit
                    if gain.size:
                        x *= gain[s, o]
                    if ktc.size:
                        x += ktc_sigma * ktc[s, b, o]
                    if inject != 0:
                        x += inject
                    x += bias[o]
                    if rail > 0:
                        x = min(max(x, -rail), rail)
                    units[s, b, o] = x

    @numba.njit(cache=True)
    def compare(h, offset, sigma, noise, armed):
        """The output comparators: h + offset (S, O) + noise > 0 where the column is armed."""
        chips, batch, cols = h.shape
        out = np.empty(h.shape, dtype=np.int64)
        for s in range(chips):
            for b in range(batch):
                for o in range(cols):
                    x = h[s, b, o] + offset[s, o]
                    if noise.size:
                        x += sigma * noise[s, b, o]
                    out[s, b, o] = 1 if x > 0 and armed[s, b, o] else 0
        return out

    @numba.njit(cache=True)
    def taps(codes, pos, K, delays, M, half, shift, lo, hi):
        """A delay line's tap sum requantized as its ``Affine`` op does, from the ring ``codes``
        (N, J, H) whose slot ``pos`` holds delay 0: clip((Σ_j x_j·K_j·M + half) >> shift)
        with K (J, H) and M (H,) int64, over the ``delays`` where some K_j ≠ 0 (exact integers:
        the op's value)."""
        rows, depth, cols = codes.shape
        out = np.empty((rows, cols), dtype=np.int64)
        acc = np.empty(cols, dtype=np.int64)
        for n in range(rows):
            acc[:] = 0
            for d in delays:
                slot = (pos - d) % depth
                for h in range(cols):
                    acc[h] += codes[n, slot, h] * K[d, h]
            for h in range(cols):
                out[n, h] = min(max((acc[h] * M[h] + half) >> shift, lo), hi)
        return out

    return {"gate": gate, "share": share, "line": line, "compare": compare, "taps": taps}


def padded(theta: np.ndarray) -> np.ndarray:
    """Sorted thresholds (…, T) padded with +inf to P = 2^n > T, at least 64 (the gate
    kernel's binary search)."""
    P = max(64, 1 << theta.shape[-1].bit_length())
    pad = np.full((*theta.shape[:-1], P - theta.shape[-1]), np.inf, dtype=theta.dtype)
    return np.ascontiguousarray(np.concatenate([theta, pad], -1))


class Noise:
    """Standard normals for the per-step noise: slices of one pool at random offsets."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.standard_normal(POOL, dtype=np.float32)

    def __call__(self, shape) -> np.ndarray:
        n = int(np.prod(shape))
        if n > POOL // 4:
            return self.rng.standard_normal(shape, dtype=np.float32)
        start = self.rng.integers(0, POOL - n)
        return self.pool[start : start + n].reshape(shape)


class Ring:
    """A delay line's last J input codes as a ring (rows, J, H) of the smallest integer type
    that holds its codes, slot ``pos`` at delay 0: a step writes one slot instead of shifting
    the (rows, H, J) buffer the graph's ``Shift`` makes."""

    def __init__(self, codes: np.ndarray, pos: int = 0):
        self.codes, self.pos = codes, pos

    @classmethod
    def of(cls, buffer: np.ndarray, dtype) -> "Ring":
        """The ring of a graph buffer (rows, H, J), index j delay j."""
        J = buffer.shape[-1]
        return cls(np.ascontiguousarray(buffer[..., -np.arange(J) % J].transpose(0, 2, 1), dtype))

    def push(self, x: np.ndarray) -> None:
        self.pos = (self.pos + 1) % self.codes.shape[1]
        self.codes[:, self.pos] = x

    def buffer(self) -> np.ndarray:
        """The graph's buffer (rows, H, J) int64."""
        J = self.codes.shape[1]
        return self.codes[:, (self.pos - np.arange(J)) % J].transpose(0, 2, 1).astype(np.int64)


def reads(op) -> set[str]:
    """The tensors and constants an op reads (every name among its fields)."""
    names = set()
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, Term):
                names |= {*item.inputs, item.weight}
            elif isinstance(item, str) and f.name not in ("out", "site"):
                names.add(item)
    return names


def invariant(graph: Graph, per_chip: set[str]) -> set[str]:
    """The tensors every chip computes alike (the input side: quantizer, encoder, a first delay
    line): those of ops outside ``per_chip`` that read only the input, constants and invariant
    states; a state is invariant when its next value is (the largest such set)."""
    nxt = {s.name: s.next for s in graph.states}
    states = set(nxt)
    while True:
        same = {"x"} | states
        for op in graph.step:
            if op.out not in per_chip and reads(op) - graph.consts.keys() <= same:
                same.add(op.out)
        if (kept := {s for s in states if nxt[s] in same}) == states:
            return same
        states = kept


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of an integer matrix and each row's index among them (as
    ``np.unique(rows, axis=0, return_inverse=True)``, in another order): rows hashed by a
    wrapping integer product, every row checked against its hash's first row (a collision
    falls back to sorting the rows)."""
    mix = np.random.default_rng(0).integers(1, 2**62, rows.shape[1]) | 1
    _, first, index = np.unique(rows @ mix, return_index=True, return_inverse=True)
    if not np.array_equal(rows[first[index]], rows):
        distinct, index = np.unique(rows, axis=0, return_inverse=True)
        return distinct, index.ravel()
    return rows[first], index.ravel()


def _tap_sum(op, line: DelayLine) -> bool:
    """Whether ``op`` is the lowering's tap sum of ``line``: Σ_j buffer·K times one multiplier,
    requantized (the ring and its kernel compute that; another form runs as the graph's op)."""
    return isinstance(op, Affine) and [(t.kind, t.inputs) for t in op.terms] == [
        ("dot", (line.buffer, line.K))
    ]


class Tiled(Numpy):
    """The backend of the per-chip ops: a chip-invariant tensor (B rows) reads as every chip's
    copy (S·B rows, chip-major)."""

    def __init__(self, env: dict, consts: dict, same: set[str], chips: int):
        super().__init__(env, consts)
        self.same, self.chips, self.tiled = same, chips, {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.same or name not in self.env or self.chips == 1:
            return super().get(name)
        if name not in self.tiled:
            v = self.env[name]
            self.tiled[name] = np.tile(v, (self.chips,) + (1,) * (v.ndim - 1))
        return self.tiled[name]


class Chips:
    """Static draws of ``seeds`` chips for every mapped layer (None or exact values: off)."""

    def __init__(self, mapping: dict, target: Target, seeds: list[int], on: set[str], dtype):
        self.n, self.on, self.target, self.dtype = len(seeds), on, target, dtype
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.layers = [
            self._mingru(layer) if layer["kind"] == "mingru_hw" else self._s4d(layer)
            for layer in mapping["layers"]
        ]

    def normal(self, effect: str, sigma, shape):  # (chips, *shape), None when off
        if effect not in self.on:
            return None
        return np.stack([r.normal(0, 1, shape) for r in self.rngs]) * sigma

    def _offsets(self, shape) -> tuple[np.ndarray, np.ndarray]:
        if "offset" not in self.on:
            return np.zeros((self.n, *shape)), np.zeros((self.n, *shape))
        kept, corr = zip(
            *(offset_draw(r, self.target.comparator, shape) for r in self.rngs), strict=True
        )
        return np.stack(kept), np.stack(corr)

    def _spread(self, shape) -> tuple[np.ndarray, np.ndarray]:
        """Relative deviation of a parasitic per chip (global, (S, 1…)) and per element."""
        p, zero = self.target.parasitic, np.zeros((self.n, *shape))
        g = self.normal("parasitic", p.spread_global_pct / 100, (1,) * len(shape))
        local = self.normal("parasitic", p.spread_local_pct / 100, shape)
        return (zero, zero) if g is None else (g + zero, g + local)

    def _mac(self, m: dict, ratiometric: bool = False) -> dict:
        """The chip's weights in units (S, K, O) and its lines' gain (S, 1, O).  A
        ``ratiometric`` line is read against references from a replica line of the same layout,
        which follow the chip's global parasitic: only the local part is left."""
        su, pos, neg = unit_sigma(self.target), m["pos_units"], m["neg_units"]
        W = np.broadcast_to((pos - neg).astype(np.float64), (self.n, *pos.shape))
        e_pos, e_neg = (
            self.normal("mismatch", su, pos.shape),
            self.normal("mismatch", su, pos.shape),
        )
        if e_pos is not None:  # the sum of |w| unit errors: σ·√|w| per side
            W = W + e_pos * np.sqrt(pos) - e_neg * np.sqrt(neg)
        c_line, c_par = m["c_line_ff"], m["c_parasitic_ff"]
        shared, spread = self._spread((m["outputs"],))
        gain = (c_line + c_par * shared * ratiometric) / (c_line + c_par * spread)
        return {"W": W.astype(self.dtype), "gain": gain[:, None].astype(self.dtype)}

    def _thresholds(self, th: dict) -> np.ndarray:
        """The gate ADC's effective thresholds (chips, O, T) in volts, sorted per column: the
        mapping's placement t_c·v_per_unit (midway between the integer accumulators it
        separates, ``mapping.thresholds``), through the threshold DAC when ``dac`` is on."""
        volts, step = th["volts"], th["dac_step_v"][:, None]
        sar = self.target.comparator.adc == "sar"
        kept, corr = self._offsets(volts.shape[:1] if sar else volts.shape)
        if sar:
            kept, corr = kept[..., None], corr[..., None]
        want = volts[None] - corr
        dac = step * dac_code(want, step, self.target.comparator.dac_bits)
        return np.sort((dac if "dac" in self.on else want) + kept, axis=-1)

    def _bank_z(self, bank: dict) -> np.ndarray:
        """z_k = Σ_{i<k} C_i / C_bank per chip, column and gate code k: (chips, O, K+1)."""
        k, n_eff = bank["switchable_units"], bank["units_effective"]  # n_eff (O,)
        cu, su = bank["unit_ff"], unit_sigma(self.target)
        units = np.ones((self.n, len(n_eff), k)) * cu
        rest = np.broadcast_to(bank["remainder_ff"], (self.n, len(n_eff))).astype(np.float64)
        e = self.normal("mismatch", su, units.shape[1:])
        if e is not None:
            units = units * (1 + e)
            rest = rest * (1 + self.normal("mismatch", su, n_eff.shape) / np.sqrt(n_eff - k))
        # the node's fixed parasitic: with its spread and the part the remainder capacitor could
        # not absorb, or (off) exactly the absorbed part
        par = bank["parasitic_ff"] - bank["parasitic_left_ff"] + np.zeros((self.n, len(n_eff)))
        if "parasitic" in self.on:
            par = bank["parasitic_ff"] * (1 + self._spread(n_eff.shape)[1])
        total = units.sum(-1) + rest + par
        cum = np.concatenate([np.zeros((self.n, len(n_eff), 1)), units.cumsum(-1)], -1)
        return (cum / total[..., None]).astype(self.dtype)

    def _ktc(self, bank: dict) -> np.ndarray:
        """σ of the kT/C that k sampled units share into the bank, volts (O, K+1)."""
        c_bank = bank["unit_ff"] * bank["units_effective"] * 1e-15  # (O,)
        k = np.arange(bank["switchable_units"] + 1)
        kT = BOLTZMANN * self.target.process.temperature_k
        return (np.sqrt(kT * k * bank["unit_ff"] * 1e-15) / c_bank[:, None]).astype(self.dtype)

    def _mingru(self, layer: dict) -> dict:
        bank = layer["bank"]
        kept, corr = self._offsets(bank["units_effective"].shape)
        theta = self._thresholds(layer["gate_thresholds"]).astype(self.dtype)  # (S, O, T)
        gate, cand = self._mac(layer["gate_mac"], ratiometric=True), self._mac(layer["cand_mac"])
        return {
            "gate_mac": gate,
            "cand_mac": cand,
            "W_both": np.concatenate([gate["W"], cand["W"]], -1),  # one GEMM for both
            "thresholds": padded(theta),  # (S, O, P)
            "z": self._bank_z(bank),
            "ktc": self._ktc(bank),
            "out_offset": (kept - corr).astype(self.dtype),  # the reference DAC corrects it
        }

    def _s4d(self, layer: dict) -> dict:
        m = layer["readout_mac"]
        w_units = m["pos_units"] + m["neg_units"]
        E = self.normal("mismatch", unit_sigma(self.target), w_units.shape)
        if E is not None:
            E = E * np.sqrt(w_units) * np.sign(m["pos_units"] - m["neg_units"])
        kept, corr = self._offsets((m["outputs"],))
        eps = self.normal(
            "mismatch", unit_sigma(self.target), (2, *layer["bank"]["units_effective"].shape)
        )
        offset = (kept - corr) / m["v_per_unit"] if "offset" in self.on else None
        return {"E": E, "offset": offset, "eps": eps}


class Simulator:
    def __init__(
        self, graph: Graph, mapping: dict, target: Target, on=(), seeds=(0,), dtype=np.float32
    ):
        if unknown := set(on) - set(NONIDEALITIES):
            raise ValueError(f"unknown non-ideality {sorted(unknown)}; choose from {NONIDEALITIES}")
        self.graph, self.mapping, self.target, self.on = graph, mapping, target, set(on)
        self.seeds, self.dtype = list(seeds), dtype
        self.chips = Chips(mapping, target, self.seeds, self.on, dtype)
        self.noise = Noise([*self.seeds, 7919])
        self.rng = self.noise.rng
        self.swing = swing(target)
        kT = BOLTZMANN * target.process.temperature_k
        self.kT = kT
        self.step_s = mapping["totals"]["time_per_step_ns"] * 1e-9
        self.analog = {}  # tensor → the layer's part that computes it (op, backend) → value
        self.lines = {}  # the delay lines' Shift and tap sum, as a ring and a kernel
        self.rings = {}  # a delay line's state → the integer type of its ring
        self.armed, self.cand_units = {}, {}  # per run: see ``run``
        self.chunk, self.tables = (0, []), {}  # per run: the input side of some steps
        layers = zip(graph.layers, mapping["layers"], self.chips.layers, strict=True)
        ops = {op.out: op for op in graph.step}
        for rec, layer, draws in layers:
            if isinstance(rec, MinGRUHw):
                parts = {rec.gate.out: self._gate, rec.cand.out: self._cand}
                parts |= {rec.bank.out: self._gated_state, rec.out: self._comparator}
                if rec.line is not None and _tap_sum(ops[rec.line.out], rec.line):
                    self.lines |= {rec.line.buffer: self._push, rec.line.out: self._taps}
                    held = ops[rec.line.buffer].buffer  # the state the Shift op reads
                    self.rings[held] = self._ring_type(held)
            else:
                parts = {rec.retention.out: self._retention, rec.readout.out: self._s4d_output}
            self.analog |= {out: partial(fn, rec, layer, draws) for out, fn in parts.items()}
        self.parts = self.analog | self.lines
        self.same = invariant(graph, set(self.analog))  # computed once for all chips

    # ---------------------------------------------------------------- delay lines

    def _ring_type(self, state: str):
        s = next(s for s in self.graph.states if s.name == state)
        types = (np.int8, np.int16, np.int32, np.int64)
        return next(t for t in types if np.iinfo(t).min <= s.lo and s.hi <= np.iinfo(t).max)

    def _push(self, op, b: Numpy) -> Ring:
        """The graph's Shift: the newest codes into the ring (a buffer array, the initial or a
        forced state, becomes one)."""
        ring = b.get(op.buffer)
        if not isinstance(ring, Ring):
            ring = Ring.of(ring, self.rings[op.buffer])
        ring.push(b.get(op.src))
        return ring

    def _taps(self, op: Affine, b: Numpy) -> np.ndarray:
        """The tap sum over the ring, requantized as the op does (its exact integers)."""
        ring, K = b.get(op.terms[0].inputs[0]), b.get(op.terms[0].inputs[1])
        Kt = np.ascontiguousarray(K.T, dtype=np.int64)
        M = np.broadcast_to(np.asarray(b.get(op.terms[0].weight), np.int64), K.shape[:1])
        wide = np.iinfo(np.int64)
        lo, hi = (wide.min, wide.max) if op.lo is None else (op.lo, op.hi)
        half = 2 ** (op.shift - 1) if op.shift else 0
        return _kernels()["taps"](
            ring.codes, ring.pos, Kt, np.flatnonzero(Kt.any(1)), np.ascontiguousarray(M),
            half, op.shift, lo, hi,
        )  # fmt: skip

    # ---------------------------------------------------------------- hardware minGRU

    def _units(self, x: np.ndarray, W: np.ndarray) -> np.ndarray:
        """A MAC's accumulators (S, B, O) over the chip's units W (S, K, O), inputs x (S·B, K)."""
        return np.matmul(x.astype(self.dtype).reshape(self.chips.n, -1, x.shape[-1]), W)

    def _accumulators(self, key: str, x: str, W: np.ndarray, b: Numpy) -> np.ndarray:
        """A MAC's accumulators (S, B, O) of input ``x``.  A chip-invariant input's rows are
        one GEMM per chip, without copies per chip; when few of the chunk's rows
        (``self.chunk``) are distinct (one input pixel: at most one row per code), once per
        distinct row and gathered.  Both are the same GEMM rows: BLAS computes each row alike
        whatever the others in a GEMM of two rows or more (a single row is a GEMV: B = 1 takes
        no table)."""
        if x not in self.same:
            return self._units(b.get(x), W)
        start, envs = self.chunk
        if key not in self.tables:
            rows = np.concatenate([env[x] for env in envs])
            distinct, index = distinct_rows(rows)
            if len(distinct) > len(rows) // 4 or len(envs[0][x]) == 1:
                self.tables[key] = None
            else:
                distinct = np.concatenate([distinct, distinct[:1]])  # two rows at least
                table = np.matmul(distinct.astype(self.dtype), W)  # (S, U, O)
                self.tables[key] = table, index.reshape(len(envs), -1)
        if self.tables[key] is None:
            return np.matmul(b.env[x].astype(self.dtype), W)
        table, index = self.tables[key]
        return table[:, index[self.t - start]]

    def _errors(self, m: dict, d: dict, shape) -> tuple:
        """The arguments of a line's ``volts``: volts per unit, the column gains, kT/C's σ and
        its noise, the injection (what is off: empty, zero)."""
        on = self.on
        return (
            self.dtype(m["v_per_unit"]),
            d["gain"][:, 0] if "parasitic" in on else np.zeros((0, 0), dtype=self.dtype),
            self.dtype(m["ktc_sigma_units"] * m["v_per_unit"]),
            self.noise(shape) if "ktc" in on else np.zeros((0, 0, 0), dtype=np.float32),
            self.dtype(self.target.leakage.charge_injection_mv * 1e-3 * ("injection" in on)),
        )

    def _rail(self):
        return self.dtype(self.swing if "clipping" in self.on else 0.0)

    def _gate(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        """The gate ADC: the number of thresholds the MAC line passes.  A flash's comparators
        decide at once on one line: those far from their threshold resolve first and kick the
        line (a StrongARM input is pulled against its decision, −q/C_line for a high one) while
        those at the line's voltage are still resolving, so they see it moved by
        q/C_line·(#low − #high).  A SAR's one comparator is reset between its decisions on the
        floating line: the kicked charge flows back and no later decision sees it.  The gate and
        the candidate MAC read the same input rows: one GEMM over both (the candidate's half is
        kept for ``_cand``)."""
        m, x = layer["gate_mac"], rec.gate.x
        cols = m["outputs"]
        if rec.cand.x == rec.gate.x:
            both = self._accumulators(f"{rec.name}.both", x, draws["W_both"], b)
            units, self.cand_units[rec.name] = both[..., :cols], both[..., cols:]
        else:
            units = self._accumulators(rec.gate.out, x, draws["gate_mac"]["W"], b)
        errors = self._errors(m, draws["gate_mac"], units.shape)
        c = self.target.comparator
        noise = np.zeros((0, 0, 0), dtype=np.float32)
        if "noise" in self.on:
            noise = self.noise(units.shape)
        kick = np.zeros(0, dtype=self.dtype)
        if "kickback" in self.on and c.adc == "flash":  # q/C_line·(#low − #high) per count
            top = layer["gate_thresholds"]["volts"].shape[-1]
            q = self.dtype(c.kickback_fc * 1e-15 / (m["c_line_ff"] * 1e-15))
            kick = q * (top - 2 * np.arange(top + 1)).astype(self.dtype)
        code = _kernels()["gate"](
            units, *errors, self._rail(), self.dtype(c.noise_mv * 1e-3), noise,
            draws["thresholds"], kick, layer["gate_thresholds"]["lo"],
        )  # fmt: skip
        return code.reshape(-1, cols)

    def _cand(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        """The candidate line h̃ (volts), its bias a charge on the line."""
        m = layer["cand_mac"]
        units = self.cand_units.pop(rec.name, None)
        if units is None:
            units = self._accumulators(rec.cand.out, rec.cand.x, draws["cand_mac"]["W"], b)
        bias = np.asarray(b.get(rec.bank.cand_offset), dtype=np.float64)
        bias_v = bias / np.asarray(b.get(rec.bank.cand), dtype=np.float64)
        bias_v = np.broadcast_to(bias_v * m["v_per_unit"], (m["outputs"],)).astype(self.dtype)
        errors = self._errors(m, draws["cand_mac"], units.shape)
        _kernels()["line"](units, *errors, bias_v, self._rail())
        return units.reshape(-1, m["outputs"])

    def _gated_state(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        """h ← h + z_k (h̃ − h) by charge sharing, in volts."""
        h, k, cand = b.get(rec.bank.h), b.get(rec.bank.z), b.get(rec.bank.acc)
        if h.dtype.kind == "i":  # the first step: the bank reset to V_cm
            h = np.zeros(cand.shape, dtype=self.dtype)
        S, bank = self.chips.n, layer["bank"]
        split = (S, -1, h.shape[-1])
        if rec.name not in self.armed:  # the columns' enable latches, open at the start
            self.armed[rec.name] = np.zeros(k.shape, dtype=np.bool_)
        sigma, noise = np.zeros((0, 0), dtype=self.dtype), np.zeros((0, 0, 0), dtype=self.dtype)
        if "ktc" in self.on:  # the k sampled units' kT/C, shared into the bank
            sigma = draws["ktc"]
            noise = self.noise(h.shape).reshape(split)
        inject = self.target.leakage.charge_injection_mv * 1e-3 * ("injection" in self.on)
        keep = 1.0
        if "leakage" in self.on:
            c_ff = float(bank["unit_ff"] * bank["units_effective"].mean())
            keep = 1 - leak_fraction(self.target, c_ff, self.step_s)
        rail = self.swing if "clipping" in self.on else 0.0
        new = _kernels()["share"](
            h.reshape(split),
            cand.reshape(split),
            k.reshape(split),
            draws["z"],
            sigma,
            noise,
            self.dtype(inject),
            self.dtype(keep),
            self.dtype(rail),
            self.armed[rec.name].reshape(split),
        )
        return new.reshape(h.shape)

    def _comparator(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        h = b.get(rec.bank.out)
        split = (self.chips.n, -1, h.shape[-1])
        noise = np.zeros((0, 0, 0), dtype=np.float32)
        if "noise" in self.on:
            noise = self.noise(h.shape).reshape(split)
        sigma = self.dtype(self.target.comparator.noise_mv * 1e-3)
        armed = self.armed[rec.name].reshape(split)  # enabled once the gate has opened
        out = _kernels()["compare"](h.reshape(split), draws["out_offset"], sigma, noise, armed)
        return out.reshape(h.shape)

    # ---------------------------------------------------------------- S4D-Real

    def _split(self, a: np.ndarray) -> np.ndarray:  # (S·B, …) → (S, B, …)
        return a.reshape(self.chips.n, -1, *a.shape[1:])

    def _bank(self, x: np.ndarray, bk: dict) -> np.ndarray:
        """kT/C noise, charge injection and leakage of a charge-sharing bank, in state codes."""
        if "ktc" in self.on:
            x = x + self.rng.normal(0, bk["ktc_sigma_codes"], x.shape)
        if "injection" in self.on:
            x = x + bk["injection_codes"]
        if "leakage" in self.on:
            c_ff = float(bk["unit_ff"] * np.mean(bk["units_effective"]))
            x = x * (1 - leak_fraction(self.target, c_ff, self.step_s))
        return x

    @staticmethod
    def _share(eps: np.ndarray, k, n_eff) -> np.ndarray:
        """The charge k switched units take of a bank of n_eff units on each chip: the unit
        errors eps (S, 2, …) summed over the first k units and over the other n_eff − k."""
        e1, e2 = eps[:, 0] * np.sqrt(k), eps[:, 1] * np.sqrt(n_eff - k)
        return (k + e1) / (n_eff + e1 + e2)

    def _retention(self, rec, layer, draws, op, b: Numpy):
        """x ← (1 − z) x + B̄u through the S4D-Real retention bank, re-quantized as the graph
        does."""
        if not self.on & BANK_ERRORS:
            return op.eval(b)
        ret = rec.retention
        S = 2.0**ret.shift
        x = b.get(ret.x).astype(np.float64)
        keep = np.asarray(b.get(ret.keep), dtype=np.float64) / S  # Ā
        write = b.get(ret.u) * b.get(ret.write) / S  # B̄u
        bk, eps = layer["bank"], draws["eps"]
        if eps is not None:
            z = self._share(eps, layer["retention_units"], bk["units_effective"])  # (S, H, n)
            keep = np.repeat(1 - z, x.shape[0] // self.chips.n, axis=0)
        x_new = self._bank(keep * x + write, bk)
        if "clipping" in self.on:
            x_new = np.clip(x_new, op.lo, op.hi)
        return np.clip(np.floor(x_new + 0.5), op.lo, op.hi).astype(np.int64)

    def _s4d_output(self, rec, layer, draws, op, b: Numpy):
        y, m = rec.readout, layer["readout_mac"]
        dot_in = b.get(y.x)  # (S·B, H, n) state codes
        acc = (dot_in * b.get(y.C)).sum(-1)
        M = b.get(y.M)
        values = [acc * M, b.get(y.u) * b.get(y.skip)]
        err = np.zeros(acc.shape)
        if draws["E"] is not None:  # E (S, n, H): per channel column
            x = self._split(dot_in.astype(np.float64))
            err += np.einsum("sbhn,snh->sbh", x, draws["E"]).reshape(acc.shape)
        if "ktc" in self.on:
            err += self.rng.normal(0, m["ktc_sigma_units"], acc.shape)
        if draws["offset"] is not None:
            err += np.repeat(draws["offset"], acc.shape[0] // self.chips.n, axis=0)
        if "noise" in self.on:
            sigma = self.target.comparator.noise_mv * 1e-3 / m["v_per_unit"]
            err += self.rng.normal(0, sigma, acc.shape)
        if not err.any():
            return op.eval(b)
        z = sum(v.astype(np.float64) for v in values) + err * M
        code = np.floor(z / 2.0**y.shift + 0.5)
        return np.clip(code, y.lo, y.hi).astype(np.int64)

    # ---------------------------------------------------------------- sequences

    def run(
        self, x: np.ndarray, trace: bool = False, force=None, after=None
    ) -> tuple[np.ndarray, dict]:
        """x (B, L, d) for every chip → logits (S, B, C) and, with ``trace``, the outputs of
        every analog part, by tensor (S, B, L, …).  ``force(t, state)``, when given, replaces the
        state entering step t and ``after(t, op, env)`` runs after each op (verification feeds
        the integer reference's state and codes there).  The input side every chip computes
        alike (``invariant``) runs once per sequence, CHUNK_ROWS sequence·steps at a time ahead
        of the chips' steps; it is the integer graph's own, so ``force`` replaces only the
        state of the per-chip part."""
        S, (B, L) = self.chips.n, x.shape[:2]
        same = [s for s in self.graph.states if s.name in self.same]
        per_chip = [s for s in self.graph.states if s.name not in self.same]
        inputs, state = self._zeros(same, B), self._zeros(per_chip, S * B)
        self.armed = {}  # layer → its columns' enable latches
        self.cand_units = {}  # layer → its candidate accumulators, from the gate's GEMM
        traced = {out: [] for out in self.analog} if trace else {}
        ahead = max(1, CHUNK_ROWS // B)
        for t in range(L):
            if t % ahead == 0:
                envs, inputs = self._input_side(x[:, t : t + ahead], inputs, same)
                self.chunk, self.tables = (t, envs), {}
            self.t, env = t, dict(self.chunk[1][t - self.chunk[0]])
            if force is not None:
                forced = force(t, {s.name: env[s.name] for s in same} | state)
                state = {s.name: forced[s.name] for s in per_chip}
            env |= state
            b = Tiled(env, self.graph.consts, self.same, S)
            for op in self.graph.step:
                if op.out not in self.same:
                    env[op.out] = self.parts[op.out](op, b) if op.out in self.parts else op.eval(b)
                if after is not None:
                    after(t, op, env)
            state = {s.name: env[s.next] for s in per_chip}
            for out in traced:
                traced[out].append(env[out])
        traced = {k: self._split(np.stack(v, 1)) for k, v in traced.items()}
        read = set().union(*map(reads, self.graph.head)) & env.keys()
        return self._split(head(self.graph, env | {k: b.get(k) for k in read})), traced

    def _zeros(self, states: list, rows: int) -> dict:
        """Every state zero at the start of a sequence (a delay line's as its ring)."""
        return {
            s.name: Ring(np.zeros((rows, s.shape[1], s.shape[0]), self.rings[s.name]))
            if s.name in self.rings
            else np.zeros((rows, *s.shape), dtype=np.int64)
            for s in states
        }

    def _input_side(self, x: np.ndarray, state: dict, states: list) -> tuple[list, dict]:
        """The chip-invariant ops over the steps of x (B, C, d): the env of each step (its
        state entering it and every invariant tensor, B rows) and the state after the last."""
        envs = []
        for t in range(x.shape[1]):
            env = {"x": x[:, t], **state}
            b = Numpy(env, self.graph.consts)
            for op in self.graph.step:
                if op.out in self.same:
                    env[op.out] = self.lines[op.out](op, b) if op.out in self.lines else op.eval(b)
            state = {s.name: env[s.next] for s in states}
            envs.append(env)
        return envs, state


def accuracy(sim: Simulator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Task accuracy of every chip (S,)."""
    logits, _ = sim.run(x)
    return (logits.argmax(-1) == y[None]).mean(-1)
