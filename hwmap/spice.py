"""ngspice cross-check of mapped pieces: netlists of a layer's MAC column, its comparator
threshold and its charge-sharing state bank, run with ``ngspice -b`` and compared with the
closed-form charge-domain formulas of the behavioural simulator (``hwmap.simulate``).

Every capacitor is referenced to ground; voltages are around V_cm; switches are ngspice ``SW``
switches (R_on 1 kΩ: settled in picoseconds; R_off 10¹² Ω, which sets the floor of the check: a
line of C leaks ≤ V·t / (R_off·C) ≈ 10⁻⁷ of its excursion over the 2 ns it floats) driven by
non-overlapping phases; the transient is Gear-integrated (trapezoidal rings at every switch
edge).  Charge is conserved on each node that floats during a phase, which is all the behaviour
needs.  Each netlist holds every draw as an independent instance.

**MAC column** (``mapping.mac``).  Each input row i holds ``per_side`` unit capacitors on each of
the two lines: ``pos_units`` signal units and ``dummy_pos`` dummies on the + line, ``neg_units``
and ``dummy_neg`` on the − line, each of C_u(1 + ε) (ε: the unit's mismatch, σ = ``unit_sigma``);
each line also carries its parasitic C_par (``c_parasitic_ff``) to ground.  Phase 1 (reset):
both lines and every bottom plate at V_cm, so every unit holds no charge.  Phase 2: the lines
float, the bottom plates of row i's signal units step to V_cm + x_i·v_code (the input code's
voltage — the charge the bit-serial planes deposit after their binary weighting, which is linear
and assumed ideal here; one driver rail per input code, shared by the rows that apply it),
dummies stay at V_cm.  Charge conservation on a line:

    ΔV± = v_code · Σ_i x_i · C±_i / C±_line,   C±_line = Σ_units C_u(1 + ε) + C_par

(C±_i: row i's signal units on that line).  The simulator's model is ΔV+ − ΔV− = v_per_unit ·
Σ_i x_i (w_i + E_i) with v_per_unit = v_code·C_u / C_line (nominal C_line = ``c_line_ff``),
w_i = pos − neg units and E_i = Σ ε(+ signal units) − Σ ε(− signal units): the mismatch of the
signal units only, not the change it makes to C_line — a second-order term the SPICE figure
includes.

**Comparator threshold** (``mapping.thresholds``): a binary-weighted capacitive threshold DAC
(``comparator.dac_bits`` bits, 2^b C_u per bit b, one C_u termination) is reset to V_cm − F,
then bit b's bottom plate steps to V_cm + F when bit b of (DAC code + 2^(bits−1)) is set, F the
column's span (``dac_step_v`` · 2^(bits−1); the swing by default):
V_dac − V_cm = code · 2F / 2^bits (each bit cap C_u·2^b carries ε of σ·√(2^b)).  A B-source
comparator (a tanh 0.1 µV wide) decides V+ − V− ≥ V_dac − V_cm.  The mapping places the
threshold at t = ⌈τ⌉ − ½ accumulator units (t·v_per_unit volts), midway between the two integer
accumulators the integer model separates (see ``mapping.thresholds``); the voltage difference
is the DAC's quantization (and, with mismatch, its capacitor errors).  Each draw tests the code
boundary nearest to its accumulator, and every second draw's inputs are moved until its integer
accumulator is ⌈τ⌉ − 1 or ⌈τ⌉ — the decisions an error of under ½ LSB must not flip.  ngspice's
decisions are compared with the simulator's comparator (line ≥ the DAC code's volts: its rule
with the DAC's step on) and with the integer model (Σ x·w ≥ ⌈τ⌉); a threshold at ⌈τ⌉ instead
of ⌈τ⌉ − ½ would put about half of the critical draws with mismatch on the wrong side.

**State bank** (``mapping.bank``): per state element, ``switchable_units`` unit capacitors of
C_u with their switch parasitic (``unit_ff``), the fixed remainder capacitor (``remainder_ff``)
and the node's parasitic to ground (``parasitic_ff``).  Phase 1: the bank is set to the state h
(the units that this gate code does not switch keep their gate switches closed, drawn as
wires).  Phase 2: the k gated units leave the bank (gate switches open) and sample the
candidate h̃.  Phase 3: they rejoin it.  Charge conservation:
V = (C_k·V_h̃ + (C_total − C_k)·V_h) / C_total, i.e. h ← h + z(h̃ − h) with
z = C_k / C_total, C_total = Σ units + C_rem + C_par — the simulator's z with the parasitic
effect on at zero spread (with mismatch the units and the remainder carry their errors).

Differences are given in millivolts and in LSBs of the layer's column (``v_per_unit``).
"""

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .mapping import swing, unit_sigma
from .targets import Target

DRAWS = 200  # random draws per piece and setting
SEED = 0
RON, ROFF = 1e3, 1e12  # ohm (τ_off of one unit: 1 ms ≫ the 4 ns transient)
EDGE = 10e-12  # rise / fall time of every phase (s)
T_END = 4e-9
TIMEOUT_S = 300
COMPARATOR_V = 1e-7  # comparator input (V) at which its tanh output reaches 88 % of V_DD


class SpiceError(RuntimeError):
    """ngspice is missing or failed; the message says what to do."""


def require_ngspice() -> str:
    path = shutil.which("ngspice")
    if path is None:
        raise SpiceError(
            "--spice needs ngspice on PATH; install it (Debian: apt-get install ngspice) or "
            "drop --spice"
        )
    return path


def ngspice_version() -> str:
    out = subprocess.run([require_ngspice(), "-v"], capture_output=True, text=True).stdout
    found = re.search(r"ngspice-(\S+)", out)
    return found.group(1) if found else "unknown"


# ---------------------------------------------------------------- netlist text

T_RESET, T_DRIVE = 1e-9, 2e-9  # column: reset released, then inputs and DAC bits stepped
T_SET, T_OPEN, T_SAMPLE, T_SAMPLED, T_SHARE = 1e-9, 1.2e-9, 1.4e-9, 2.0e-9, 2.2e-9  # bank


def _pwl(points) -> str:
    return "pwl(" + " ".join(f"{t:.6g} {v:.15g}" for t, v in points) + ")"


def _step(t: float, before: float, after: float) -> str:
    return _pwl([(0, before), (t, before), (t + EDGE, after)])


def _window(start: float, stop: float, inside: float) -> str:
    """A 0/1 control at ``inside`` during (start, stop), at the other level before and after."""
    out = 1 - inside
    return _pwl(
        [(0, out), (start, out), (start + EDGE, inside), (stop, inside), (stop + EDGE, out)]
    )


def _cap(name: str, a: str, b: str, units: float, cu_ff: float) -> str:
    return f"{name} {a} {b} {units * cu_ff:.15g}f"


def _netlist(title: str, target: Target, body: list[str], vectors: list[str]) -> str:
    head = [
        f"* {title}",
        "* written by hwmap.spice (qssm map-to-hw --spice)",
        "* run: ngspice -b <this file>  (writes the vectors to out.txt)",
        f".model swm sw vt=0.5 vh=0 ron={RON:g} roff={ROFF:g}",
        f"vvcm vcm 0 {target.process.vcm_v:.15g}",
        ".options method=gear reltol=1e-6 abstol=1e-18 vntol=1e-9 chgtol=1e-21",
    ]
    control = [".control", f"tran {T_END / 100:.6g} {T_END:.6g}", "set wr_singlescale"]
    control += ["set wr_vecnames", "option numdgt=15", "wrdata out.txt " + " ".join(vectors)]
    return "\n".join(head + body + control + ["quit", ".endc", ".end", ""])


def v_code(mac: dict, target: Target) -> float:
    """Volts per input code on a MAC's bottom plates."""
    return mac["v_per_unit"] * mac["c_line_ff"] / target.capacitor.unit_ff


def column_netlist(mac: dict, target: Target, d: dict) -> tuple[str, list[str]]:
    """One MAC column per draw of ``d`` (see :func:`column_draws`), each with its threshold DAC
    and comparator when ``d`` holds DAC codes; returns (netlist, the vectors it writes)."""
    cu, vcm, sw = target.capacitor.unit_ff, target.process.vcm_v, swing(target)
    bits, vc = target.comparator.dac_bits, v_code(mac, target)
    body = [f"vrst rst 0 {_step(T_RESET, 1, 0)}"]
    rail = {int(x): f"x{x}".replace("-", "m") for x in np.unique(d["x"])}  # a driver per code
    body += [f"v{r} {r} 0 {_step(T_DRIVE, vcm, vcm + x * vc)}" for x, r in rail.items()]
    vectors = []
    for j, c in enumerate(d["col"]):
        body.append(f"* draw {j}: column {c}")
        for s in "pn":
            body.append(f"sr{s}{j} l{s}{j} vcm rst 0 swm")
            body.append(_cap(f"cpar{s}{j}", f"l{s}{j}", "0", mac["c_parasitic_ff"], 1.0))
        for i, x in enumerate(d["x"][j]):
            for s, signal in enumerate((mac["pos_units"][i, c], mac["neg_units"][i, c])):
                for u in range(mac["units_per_side"]):  # signal units first, then dummies
                    name, bottom = ("cs", rail[int(x)]) if u < signal else ("cd", "vcm")
                    units = 1 + d["eps"][j, s, i, u]
                    body.append(
                        _cap(f"{name}{'pn'[s]}{j}_{i}_{u}", f"l{'pn'[s]}{j}", bottom, units, cu)
                    )
        vectors += [f"v(lp{j})", f"v(ln{j})"]
        if "dac" in d:  # the DAC's references: ± its column's span (default the swing)
            f = float(d["dac_full"][j]) if "dac_full" in d else sw
            body += [f"vdlo{j} dlo{j} 0 {vcm - f:.15g}"]
            body += [f"vdhi{j} dhi{j} 0 {_step(T_DRIVE, vcm - f, vcm + f)}"]
            body += _threshold(j, int(d["dac"][j]) + 2 ** (bits - 1), d["dac_eps"][j], target)
            vectors += [f"v(dac{j})", f"v(cmp{j})"]
    return _netlist(f"MAC column, {len(d['col'])} draws", target, body, vectors), vectors


def _threshold(j: int, code: int, eps: np.ndarray, target: Target) -> list[str]:
    """Draw j's threshold DAC (unsigned ``code``, bit caps 2^b C_u + eps[b], termination
    C_u + eps[-1]) and the comparator of its line pair against it."""
    cu, vcm, bits = target.capacitor.unit_ff, target.process.vcm_v, target.comparator.dac_bits
    lines = [f"* draw {j}: threshold DAC code {code - 2 ** (bits - 1)}"]
    lo = f"dlo{j}"
    lines += [f"srd{j} dac{j} {lo} rst 0 swm", _cap(f"cdt{j}", f"dac{j}", lo, 1 + eps[-1], cu)]
    for b in range(bits):
        bottom = f"dhi{j}" if code >> b & 1 else lo
        lines.append(_cap(f"cdb{j}_{b}", f"dac{j}", bottom, 2**b + eps[b], cu))
    lines.append(
        f"bcmp{j} cmp{j} 0 v = {target.process.vdd_v / 2:g} * (1 + tanh(((v(lp{j}) - v(ln{j})) "
        f"- (v(dac{j}) - {vcm:.15g})) / {COMPARATOR_V:g}))"
    )
    return lines


def bank_netlist(bank: dict, target: Target, d: dict) -> tuple[str, list[str]]:
    """One state element's charge-sharing bank per draw of ``d`` (see :func:`bank_draws`): the
    switchable units (C_u with its switch parasitic), the fixed remainder capacitor and the
    node's parasitic to ground, as :func:`hwmap.mapping.bank` sized them."""
    vcm, S, cu = target.process.vcm_v, bank["switchable_units"], bank["unit_ff"]
    body = [
        f"vset set 0 {_step(T_SET, 1, 0)}",
        f"vshr shr 0 {_window(T_OPEN, T_SHARE, 0)}",  # gate switches: open while sampling
        f"vsmp smp 0 {_window(T_SAMPLE, T_SAMPLED, 1)}",
    ]
    vectors = []
    for j, c in enumerate(d["col"]):
        k, v = int(d["k"][j]), float(d["v"][j])
        rem = float(np.broadcast_to(bank["remainder_ff"], bank["units_effective"].shape).ravel()[c])
        body.append(f"* draw {j}: state element {c}, gate switches {k} of {S} units")
        body.append(f"vh{j} hs{j} 0 {vcm + d['h'][j] * v:.15g}")
        body.append(f"vc{j} cs{j} 0 {vcm + d['cand'][j] * v:.15g}")
        body.append(f"ss{j} b{j} hs{j} set 0 swm")
        body.append(_cap(f"crem{j}", f"b{j}", "0", 1 + d["rem_eps"][j], rem))
        body.append(_cap(f"cpar{j}", f"b{j}", "0", bank["parasitic_ff"], 1.0))
        for i in range(k):  # the gated units: gate switch to the bank, sample switch to h̃
            body.append(_cap(f"cu{j}_{i}", f"u{j}_{i}", "0", 1 + d["eps"][j, i], cu))
            body.append(f"sg{j}_{i} u{j}_{i} b{j} shr 0 swm")
            body.append(f"sc{j}_{i} u{j}_{i} cs{j} smp 0 swm")
        for i in range(k, S):  # not gated: their gate switches stay closed (drawn as wires)
            body.append(_cap(f"cu{j}_{i}", f"b{j}", "0", 1 + d["eps"][j, i], cu))
        vectors.append(f"v(b{j})")
    return _netlist(f"state bank, {len(d['col'])} draws", target, body, vectors), vectors


# ---------------------------------------------------------------- draws and the behavioural model


def column_draws(mac: dict, th: dict | None, target: Target, rng, n: int, mismatch: bool):
    """``n`` draws of a column of ``mac`` and input codes over the full swing (signed codes for
    multi-bit and analog inputs, 0/1 for binary ones), unit errors (zero without ``mismatch``),
    and, where the layer has thresholds, the boundary nearest to each draw's accumulator.  Every
    second draw's inputs are then moved until its integer accumulator is one of the two values
    that boundary separates (⌈τ⌉ − 1 or ⌈τ⌉, at random): the decisions a misplaced threshold
    gets wrong."""
    K, outputs = mac["pos_units"].shape
    top = round(swing(target) / v_code(mac, target))  # codes that span the swing
    lo, hi = (0, 1) if top == 1 else (-top, top - 1)
    bits = target.comparator.dac_bits
    d = {"col": rng.integers(0, outputs, n), "x": rng.integers(lo, hi + 1, (n, K))}
    su = unit_sigma(target) * mismatch
    d["eps"] = rng.normal(0, 1, (n, 2, K, mac["units_per_side"])) * su
    d["dac_eps"] = rng.normal(0, 1, (n, bits + 1)) * su * np.sqrt(2.0 ** np.r_[np.arange(bits), 0])
    if th is not None:
        W = (mac["pos_units"] - mac["neg_units"])[:, d["col"]].T  # (n, K)
        t = th["acc"][d["col"]]  # (n, boundaries): midway, ⌈τ⌉ − ½
        b = np.abs(t - (d["x"] * W).sum(1)[:, None]).argmin(1)
        side = rng.integers(-1, 1, n)  # ⌈τ⌉ − 1 or ⌈τ⌉
        for j in range(0, n, 2):
            want = int(np.ceil(t[j, b[j]])) + int(side[j])
            d["x"][j] = _inputs_reaching(d["x"][j], W[j], want, lo, hi, rng)
        d["acc_int"] = (d["x"] * W).sum(1)
        b = np.abs(t - d["acc_int"][:, None]).argmin(1)
        d["threshold"] = t[np.arange(n), b]
        d["threshold_v"] = th["volts"][d["col"], b]
        d["dac"] = th["dac_codes"][d["col"], b]
        d["dac_step_v"] = th["dac_step_v"][d["col"]]
        d["dac_full"] = d["dac_step_v"] * 2 ** (bits - 1)  # ± the column's span
    d["acc"] = column_model(mac, d)
    return d


def _inputs_reaching(x: np.ndarray, w: np.ndarray, want: int, lo: int, hi: int, rng):
    """Input codes near ``x`` (within [lo, hi]) whose product with ``w`` is ``want``: rows
    moved one at a time, in random order, by as much as the remaining difference allows; ``x``
    itself where that does not reach it."""
    moved, acc = x.copy(), int(x @ w)
    for i in np.concatenate([rng.permutation(len(w)), rng.permutation(len(w))]):
        if acc == want:
            break
        if w[i]:
            new = int(np.clip(moved[i] + int((want - acc) / w[i]), lo, hi))
            acc, moved[i] = acc + (new - moved[i]) * int(w[i]), new
    return moved if acc == want else x


def column_model(mac: dict, d: dict) -> np.ndarray:
    """The simulator's MAC output in accumulator units: Σ_i x_i (w_i + E_i)."""
    pos, neg = mac["pos_units"][:, d["col"]].T, mac["neg_units"][:, d["col"]].T  # (n, K)
    u = np.arange(mac["units_per_side"])
    E = (d["eps"][:, 0] * (u < pos[..., None])).sum(-1)
    E -= (d["eps"][:, 1] * (u < neg[..., None])).sum(-1)
    return (d["x"] * (pos - neg + E)).sum(-1)


def bank_draws(bank: dict, target: Target, rng, n: int, mismatch: bool) -> dict:
    """``n`` draws of a state element, gate code k, state h and candidate h̃ (codes over the
    swing at the element's volts per code ``v``), relative unit errors (zero without
    ``mismatch``; the remainder's as one capacitor of n_eff − S units, as the simulator draws)."""
    S, n_eff = bank["switchable_units"], bank["units_effective"].ravel()
    d = {"col": rng.integers(0, n_eff.size, n), "k": rng.integers(0, S + 1, n)}
    d["v"] = np.broadcast_to(bank["v_per_code"], bank["units_effective"].shape).ravel()[d["col"]]
    top = np.floor(swing(target) / d["v"]).astype(np.int64)
    d["h"], d["cand"] = rng.integers(-top, top + 1, (2, n))
    su = unit_sigma(target) * mismatch
    d["eps"] = rng.normal(0, su, (n, S))
    d["rem_eps"] = rng.normal(0, 1, n) * su / np.sqrt(np.maximum(n_eff[d["col"]] - S, 1))
    return d


def bank_model(bank: dict, d: dict) -> np.ndarray:
    """The simulator's gated state in codes (``Simulator._bank_z`` with the parasitic effect on
    at zero spread): h + z (h̃ − h), z = Σ_{i<k} C_i / (Σ_i C_i + C_rem + C_par)."""
    shape = bank["units_effective"].shape
    rem = np.broadcast_to(bank["remainder_ff"], shape).ravel()[d["col"]] * (1 + d["rem_eps"])
    units = bank["unit_ff"] * (1 + d["eps"])  # (n, S)
    gated = np.arange(bank["switchable_units"]) < d["k"][:, None]
    z = (units * gated).sum(1) / (units.sum(1) + rem + bank["parasitic_ff"])
    return d["h"] + z * (d["cand"] - d["h"])


# ---------------------------------------------------------------- running ngspice


def run_ngspice(netlist: str, vectors: list[str]) -> np.ndarray:
    """The value of each vector at the end of the transient."""
    ngspice = require_ngspice()
    with tempfile.TemporaryDirectory(prefix="qssm-spice-") as tmp:
        Path(tmp, "in.cir").write_text(netlist)
        try:
            done = subprocess.run(
                [ngspice, "-b", "in.cir"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise SpiceError(f"ngspice ran past {TIMEOUT_S} s") from None
        out = Path(tmp, "out.txt")
        if done.returncode or not out.exists():
            log = (done.stdout + done.stderr).strip().splitlines()
            why = next((line for line in log if "rror" in line), log[-1] if log else "no output")
            raise SpiceError(f"ngspice failed (exit {done.returncode}): {why.strip()}")
        rows = out.read_text().splitlines()
    names, last = rows[0].split()[1:], np.array(rows[-1].split(), dtype=np.float64)
    if names != vectors:
        raise SpiceError(f"ngspice wrote {len(names)} of {len(vectors)} vectors")
    if abs(last[0] - T_END) > 1e-3 * T_END:  # an aborted transient still writes its vectors
        raise SpiceError(f"ngspice stopped the transient at {last[0]:.4g} s of {T_END:g} s")
    return last[1:]


# ---------------------------------------------------------------- the cross-check


def _row(layer: str, piece: str, mismatch: bool, diff, lsb: float, signal, netlist, **extra):
    return {
        "layer": layer,
        "piece": piece,
        "mismatch": mismatch,
        "max_diff_mv": float(np.abs(diff).max() * 1e3),
        "max_diff_lsb": float(np.abs(diff).max() / lsb),
        "lsb_uv": lsb * 1e6,
        "max_signal_mv": float(np.abs(signal).max() * 1e3),
        "netlist": netlist,
        **extra,
    }


def _column_rows(name, key, mac, th, target, d, out: Path, tag: str) -> list[dict]:
    """The MAC column and, where the layer has thresholds, the comparator threshold."""
    text, vectors = column_netlist(mac, target, d)
    path = f"spice/{name}.{key}{tag}.cir"
    (out / path).write_text(text)
    v = run_ngspice(text, vectors).reshape(len(d["col"]), -1)
    lsb, vcm, mismatch = mac["v_per_unit"], target.process.vcm_v, bool(tag)
    line = v[:, 0] - v[:, 1]
    rows = [_row(name, f"{key} column", mismatch, line - d["acc"] * lsb, lsb, line, path)]
    if th is not None:
        high = v[:, 3] > target.process.vdd_v / 2
        dac = v[:, 2] - vcm
        # a boundary beyond its column's span is clipped by the DAC: one the column never reaches
        inside = np.abs(d["threshold_v"]) <= d["dac_full"]
        diff = np.where(inside, dac - d["threshold_v"], 0.0)
        # the simulator's comparator (the DAC's step on): line ≥ its DAC code's volts; the
        # integer model: the integer accumulator ≥ ⌈τ⌉; critical: a draw on ⌈τ⌉ − 1 or ⌈τ⌉
        simulator = d["acc"] * lsb >= d["dac"] * d["dac_step_v"]
        ceil = np.ceil(d["threshold"])
        integer = d["acc_int"] >= ceil
        rows.append(
            _row(name, "threshold DAC", mismatch, diff, lsb, dac, path)
            | {"beyond_span": int((~inside).sum())}
            | {
                "decision_agreement": float((high == simulator).mean()),
                "integer_agreement": float((high == integer)[inside].mean()),
                "critical_draws": int(np.isin(d["acc_int"] - ceil, (-1, 0)).sum()),
                "dac_step_lsb": float(d["dac_step_v"].max() / lsb),
                "max_error_lsb": float(np.abs(d["acc"] - d["acc_int"]).max()),
            }
        )
    return rows


def _bank_row(name, lsb: float, bank, target, d, out: Path, tag: str) -> dict:
    text, vectors = bank_netlist(bank, target, d)
    path = f"spice/{name}.bank{tag}.cir"
    (out / path).write_text(text)
    v = run_ngspice(text, vectors) - target.process.vcm_v
    return _row(name, "state bank", bool(tag), v - bank_model(bank, d) * d["v"], lsb, v, path)


def cross_check(mapping: dict, target: Target, out: Path, draws: int = DRAWS, seed: int = SEED):
    """Every mapped layer's MAC column, comparator threshold and state bank in ngspice against
    the behavioural formulas, over ``draws`` random draws, without and with capacitor mismatch
    (the same draws); writes the netlists into ``out``/spice and returns the comparison."""
    start, rows = time.perf_counter(), []
    (out / "spice").mkdir(parents=True, exist_ok=True)
    for li, layer in enumerate(mapping["layers"]):
        key = next(k for k in layer if k.endswith("_mac"))  # gate_mac or readout_mac
        mac, th, name = layer[key], layer.get("gate_thresholds"), layer["layer"]
        for mismatch in (False, True):
            tag = "_mismatch" if mismatch else ""
            rng = np.random.default_rng([seed, li, 0])
            d = column_draws(mac, th, target, rng, draws, mismatch)
            rows += _column_rows(name, key, mac, th, target, d, out, tag)
            d = bank_draws(
                layer["bank"], target, np.random.default_rng([seed, li, 1]), draws, mismatch
            )
            rows.append(_bank_row(name, mac["v_per_unit"], layer["bank"], target, d, out, tag))
    return {
        "ngspice": ngspice_version(),
        "draws": draws,
        "seed": seed,
        "unit_sigma": unit_sigma(target),
        "wall_s": time.perf_counter() - start,
        "pieces": rows,
    }
