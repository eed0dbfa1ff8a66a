"""Behavioural simulator of a mapped model on a switched-capacitor target, with switchable
non-idealities and many chips at once (the seed axis is folded into the batch).

It executes the lowered integer graph; the tensors of each layer's hardware record (the analog
core the mapping placed) are computed by their charge-domain versions instead:

- the gate ADC (hardware minGRU) decides through the mapped thresholds: code = number of
  thresholds the MAC output passes (exact integer thresholds when ideal);
- a MAC output is the integer accumulator plus its errors, in accumulator units: static
  capacitor mismatch per chip (each weight of |w| units carries Σ|w| unit errors), parasitic
  gain error per column and chip (±10 % parasitic), kT/C noise per sampling, charge injection;
- the gated state shares charge through the chip's own units: z_eff(k) = (k + Σ_{i<k} ε_i) /
  (N + Σ ε) instead of k/N, plus kT/C noise, charge injection, leakage droop and rail clipping;
- comparators (the binary outputs, the ADCs) add their trimmed static offset per chip and their
  noise per decision.

With every non-ideality off the simulator computes exactly the integer reference (tested:
identical decisions and outputs on every timestep).
"""

from functools import partial

import numpy as np

from .graph import ANALOG_BITS, Graph, MinGRUHw
from .intref import Numpy, head, init_state, step
from .mapping import unit_sigma
from .targets import Target

NONIDEALITIES = tuple("mismatch parasitic ktc offset noise injection leakage clipping".split())
BANK_ERRORS = {"mismatch", "ktc", "injection", "leakage", "clipping"}  # they move a bank's state
PARASITIC_SPREAD = 0.10  # σ of the parasitic capacitance around its nominal value, per chip


class Chips:
    """Static draws of ``seeds`` chips for every mapped layer (None: that non-ideality is off)."""

    def __init__(self, mapping: dict, target: Target, seeds: list[int], on: set[str]):
        self.n = len(seeds)
        rngs = [np.random.default_rng(s) for s in seeds]

        def normal(effect: str, sigma, shape):  # (chips, *shape)
            return np.stack([r.normal(0, sigma, shape) for r in rngs]) if effect in on else None

        su, offset_v = unit_sigma(target), target.comparator.trimmed_offset_mv * 1e-3
        self.layers = []
        for layer in mapping["layers"]:
            d = {}
            for key in (k for k in layer if k.endswith("_mac")):  # in the mapping's order
                m = layer[key]
                w_units = m["pos_units"] + m["neg_units"]  # (K, O)
                E, gain = normal("mismatch", 1, w_units.shape), normal("parasitic", 1, m["outputs"])
                if E is not None:
                    E = E * np.sqrt(w_units) * su * np.sign(m["pos_units"] - m["neg_units"])
                if gain is not None:
                    gain = 1 / (1 + PARASITIC_SPREAD * gain * m["c_parasitic_ff"] / m["c_line_ff"])
                offset = normal("offset", offset_v / m["v_per_unit"], m["outputs"])
                d[key] = {"E": E, "gain": gain, "offset": offset}
            n_eff, v_code = layer["bank"]["units_effective"], layer["bank"]["v_per_code"]
            eps = normal("mismatch", su, (2, *n_eff.shape))  # the first k units, the others
            d["bank"] = {"eps": eps, "offset": normal("offset", offset_v / v_code, n_eff.shape[:1])}
            self.layers.append(d)


class Simulator:
    def __init__(self, graph: Graph, mapping: dict, target: Target, on=(), seeds=(0,)):
        if unknown := set(on) - set(NONIDEALITIES):
            raise ValueError(f"unknown non-ideality {sorted(unknown)}; choose from {NONIDEALITIES}")
        self.graph, self.mapping, self.target, self.on = graph, mapping, target, set(on)
        self.seeds = list(seeds)
        self.chips = Chips(mapping, target, self.seeds, self.on)
        self.rng = np.random.default_rng([*self.seeds, 7919])
        self.analog = {}  # tensor → the layer's part that computes it (op, backend) → value
        layers = zip(graph.layers, mapping["layers"], self.chips.layers, strict=True)
        for rec, layer, draws in layers:
            if isinstance(rec, MinGRUHw):
                parts = {rec.gate.out: self._gate, rec.cand.out: self._cand}
                parts |= {rec.bank.out: self._gated_state, rec.out: self._comparator}
            else:
                parts = {rec.retention.out: self._retention, rec.readout.out: self._s4d_output}
            self.analog |= {out: partial(fn, rec, layer, draws) for out, fn in parts.items()}

    # ---------------------------------------------------------------- per-op physics

    def _split(self, a: np.ndarray) -> np.ndarray:  # (S·B, …) → (S, B, …)
        return a.reshape(self.chips.n, -1, *a.shape[1:])

    def _mac(self, part, m: dict, draws: dict, b: Numpy) -> tuple[np.ndarray, np.ndarray]:
        """A MAC's integer output x @ W (S·B, O) and its deviation from it, in accumulator
        units."""
        x = b.get(part.x)
        acc = x @ b.get(part.W)
        err = np.zeros(acc.shape)
        if draws["E"] is not None:  # x (S·B, K) @ E (S, K, O)
            err += (self._split(x.astype(np.float64)) @ draws["E"]).reshape(acc.shape)
        if draws["gain"] is not None:  # gain (S, O) per column and chip
            gain = draws["gain"][:, None] - 1
            err += (self._split(acc.astype(np.float64)) * gain).reshape(acc.shape)
        if "ktc" in self.on:
            err += self.rng.normal(0, m["ktc_sigma_units"], acc.shape)
        if "injection" in self.on:
            err += self.target.leakage.charge_injection_mv * 1e-3 / m["v_per_unit"]
        return acc, err

    def _decide(self, offset: np.ndarray | None, v_per_unit: float, shape) -> np.ndarray:
        """Input-referred comparator offset (static per chip: ``offset`` (S, …), None when off)
        and noise, in units of ``v_per_unit`` volts."""
        err = np.zeros(shape)
        if offset is not None:
            err += np.repeat(offset, shape[0] // self.chips.n, axis=0)
        if "noise" in self.on:
            err += self.rng.normal(0, self.target.comparator.noise_mv * 1e-3 / v_per_unit, shape)
        return err

    def _gate(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        """The gate ADC: thresholds of the mapping, the MAC output with its errors."""
        m, d = layer["gate_mac"], draws["gate_mac"]
        acc, analog = self._mac(rec.gate, m, d, b)  # then the comparators' offset and noise
        analog += self._decide(d["offset"], m["v_per_unit"], acc.shape)
        passed = (acc + analog)[..., None] >= np.ceil(layer["gate_thresholds"]["acc"])
        return layer["gate_thresholds"]["lo"] + passed.sum(-1)

    def _cand(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        acc, err = self._mac(rec.cand, layer["cand_mac"], draws["cand_mac"], b)
        return acc + err if err.any() else acc

    def _bank(self, x: np.ndarray, bk: dict) -> np.ndarray:
        """kT/C noise, charge injection and leakage droop of a charge-sharing bank, in codes."""
        if "ktc" in self.on:
            x = x + self.rng.normal(0, bk["ktc_sigma_codes"], x.shape)
        if "injection" in self.on:
            x = x + bk["injection_codes"]
        if "leakage" in self.on:
            x = x * (1 - self.target.leakage.droop_per_step)
        return x

    @staticmethod
    def _share(eps: np.ndarray, k, n_eff) -> np.ndarray:
        """The charge that k switched units take of a bank of n_eff units on each chip: the unit
        errors eps (S, 2, …) summed over the first k units and over the other n_eff − k."""
        e1, e2 = eps[:, 0] * np.sqrt(k), eps[:, 1] * np.sqrt(n_eff - k)
        return (k + e1) / (n_eff + e1 + e2)

    def _gated_state(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        """h ← h + z (h̃ − h) through the chip's bank; exact integer sum when ideal."""
        bank_ = rec.bank
        h, k = b.get(bank_.h), b.get(bank_.z)
        cand_acc = b.get(bank_.acc)  # the candidate MAC: float once it carries errors
        if not self.on & BANK_ERRORS and cand_acc.dtype.kind == h.dtype.kind == "i":
            return op.eval(b)
        M_share, M_cand, offset = (
            np.asarray(b.get(n), dtype=np.float64)
            for n in (bank_.share, bank_.cand, bank_.cand_offset)
        )
        cand = (cand_acc * M_cand + offset) / -M_share
        z = k * layer["s_gate"]
        bk, eps = layer["bank"], draws["bank"]["eps"]
        if eps is not None:  # per chip (S, B, O)
            z = self._share(eps[:, :, None], self._split(k), bk["units_effective"]).reshape(k.shape)
        h_new = self._bank(h + z * (cand - h), bk)
        if "clipping" in self.on:
            h_new = np.clip(h_new, -(2**ANALOG_BITS), 2**ANALOG_BITS)
        return h_new

    def _comparator(self, rec: MinGRUHw, layer, draws, op, b: Numpy):
        h = b.get(rec.bank.out)
        err = self._decide(draws["bank"]["offset"], layer["bank"]["v_per_code"], h.shape)
        return (h + err > 0).astype(np.int64)

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
        bk, eps = layer["bank"], draws["bank"]["eps"]
        if eps is not None:
            z = self._share(eps, layer["retention_units"], bk["units_effective"])  # (S, H, n)
            keep = np.repeat(1 - z, x.shape[0] // self.chips.n, axis=0)
        x_new = self._bank(keep * x + write, bk)
        return np.clip(np.floor(x_new + 0.5), op.lo, op.hi).astype(np.int64)

    def _s4d_output(self, rec, layer, draws, op, b: Numpy):
        y, m = rec.readout, layer["readout_mac"]
        dot_in = b.get(y.x)  # (S·B, H, n) state codes
        acc = (dot_in * b.get(y.C)).sum(-1)
        M = b.get(y.M)
        values = [acc * M, b.get(y.u) * b.get(y.skip)]
        err = np.zeros(acc.shape)
        d = draws["readout_mac"]
        if d["E"] is not None:  # E (S, n, H): per channel column
            x = self._split(dot_in.astype(np.float64))
            err += np.einsum("sbhn,snh->sbh", x, d["E"]).reshape(acc.shape)
        if "ktc" in self.on:
            err += self.rng.normal(0, m["ktc_sigma_units"], acc.shape)
        err += self._decide(d["offset"], m["v_per_unit"], acc.shape)
        if not err.any():
            return op.eval(b)
        z = sum(v.astype(np.float64) for v in values) + err * M
        code = np.floor(z / 2.0**y.shift + 0.5)
        return np.clip(code, y.lo, y.hi).astype(np.int64)

    # ---------------------------------------------------------------- sequences

    def run(self, x: np.ndarray, trace: bool = False) -> tuple[np.ndarray, dict]:
        """x (B, L, d) for every chip → logits (S, B, C) and, with ``trace``, the outputs of
        every analog part, by tensor (S, B, L, …)."""
        xs = np.tile(x, (self.chips.n, 1, 1))
        state = init_state(self.graph, len(xs))
        traced = {out: [] for out in self.analog} if trace else {}
        for t in range(x.shape[1]):
            env, state = step(self.graph, xs[:, t], state, parts=self.analog)
            for out in traced:
                traced[out].append(env[out])
        traced = {k: self._split(np.stack(v, 1)) for k, v in traced.items()}
        return self._split(head(self.graph, env)), traced


def accuracy(sim: Simulator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Task accuracy of every chip (S,)."""
    logits, _ = sim.run(x)
    return (logits.argmax(-1) == y[None]).mean(-1)
