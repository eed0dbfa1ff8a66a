"""``hw/report.md`` of ``qssm map-to-hw``: mapping tables, verification, Monte-Carlo plot."""

from pathlib import Path

import matplotlib.pyplot as plt

from qssm.report import save_figure, table, write_report

COLUMNS = {  # the tables' headers
    "totals": "capacitance (pF) | area (mm²) | switches | comparators | energy / step (pJ) | "
    "time / step (ns)",
    "macs": "layer | MAC | fan-in × out | units/side | tiles | input bits | C_line (fF) | "
    "µV / acc unit | kT/C σ (acc units)",
    "banks": "layer | kind | switchable units | effective units | kT/C σ (state codes) | "
    "ADC bits | comparators",
    "monte_carlo": "setting | C_u (fF) | residual offset σ (mV) | noise σ (mV) | mean (%) | "
    "std | p5 | p50 | p95 | integer model (%) | within 2 pts | within 4 pts | chips × sequences",
    "ablation": "effect | alone on: mean (%) | alone on: within 2 pts | alone off: mean (%) | "
    "alone off: within 2 pts",
    "checks": "check | result | threshold | passed",
    "spice": "layer | piece | mismatch | max diff (mV) | max diff (column LSB) | "
    "decisions agree (simulator / integer model) | netlist",
}


SWEEPS = (
    ("unit_ff", "unit capacitance C_u (fF)"),
    ("offset_mv", "residual comparator offset σ (mV)"),
    ("noise_mv", "comparator noise σ (mV)"),
)


def plot_monte_carlo(mc: list[dict], path: Path) -> None:
    """Accuracy (mean ± std over chips, the integer model dashed) against unit capacitance,
    residual comparator offset and comparator noise, every other setting nominal."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (key, label) in zip(axes, SWEEPS, strict=True):
        pts = sorted((r[key], r) for r in mc if r["sweep"] == key)
        if pts:
            mean, std = ([100 * r[k] for _, r in pts] for k in ("mean", "std"))
            ax.errorbar([p[0] for p in pts], mean, std, marker="o", ms=4, capsize=3, label="chips")
            ax.axhline(100 * pts[0][1]["ideal"], ls="--", color="gray", label="integer model")
            ax.legend(fontsize=8)
            ax.set_xscale("log")
            ax.set_xticks([p[0] for p in pts], [f"{p[0]:g}" for p in pts])
            ax.minorticks_off()
        ax.set(xlabel=label, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _mc_rows(mc: list[dict]) -> list[list]:
    return [
        [r["id"], r["unit_ff"], f"{r['residual_offset_mv']:.3g}", r["noise_mv"], _pct(r["mean"])]
        + [_pct(r[k]) for k in ("std", "p5", "p50", "p95", "ideal", "yield_2", "yield_4")]
        + [f"{r['chips']} × {r['sequences']}"]
        for r in mc
        if not r["sweep"].startswith("alone")
    ]


def _ablation_rows(mc: list[dict]) -> list[list]:
    by = {r["id"]: r for r in mc}
    rows = []
    for e in dict.fromkeys(r["id"].split("=")[1] for r in mc if r["sweep"].startswith("alone")):
        on, off = by.get(f"only={e}"), by.get(f"without={e}")
        cells = [[_pct(r["mean"]), _pct(r["yield_2"])] if r else ["", ""] for r in (on, off)]
        rows.append([e, *cells[0], *cells[1]])
    return rows


def _table(name: str, rows: list[list]) -> str:
    return table(COLUMNS[name].split(" | "), rows)


def _mac_rows(mapping: dict) -> list[list]:
    return [
        [i, key.replace("_mac", ""), f"{m['fan_in']} × {m['outputs']}", m["units_per_side"]]
        + [m["tiles"], m["input_bits"], f"{m['c_line_ff']:.1f}", f"{1e6 * m['v_per_unit']:.1f}"]
        + [f"{m['ktc_sigma_units']:.2f}"]
        for i, layer in enumerate(mapping["layers"])
        for key, m in layer.items()
        if key.endswith("_mac")  # gate_mac, cand_mac or readout_mac
    ]


def _figure(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, float) else str(value)


def _spice_section(checked: dict) -> str:
    """The ngspice cross-check (``hwmap.spice.cross_check``) as a table."""
    rows = []
    for r in checked["pieces"]:
        agree = "—"
        if "decision_agreement" in r:
            agree = f"{_figure(r['decision_agreement'])} / {_figure(r['integer_agreement'])}"
        rows.append(
            [r["layer"], r["piece"], ("no", "yes")[r["mismatch"]], f"{r['max_diff_mv']:.4f}"]
            + [f"{r['max_diff_lsb']:.3g}", agree, f"`{r['netlist']}`"]
        )
    note = (
        f"ngspice {checked['ngspice']} against the behavioural formulas, {checked['draws']} "
        f"random draws per piece (seed {checked['seed']}), without and with capacitor mismatch "
        f"(σ(ΔC/C) = {100 * checked['unit_sigma']:.2f} % per unit, the same draws on both "
        f"sides); {checked['wall_s']:.1f} s. Column LSB: the layer's volts per accumulator unit."
    )
    return note + "\n\n" + _table("spice", rows)


def write_hw_report(out: Path, run: str, mapping: dict, verify: dict, spice=None) -> None:
    """``verify``: the verification results after ``hwmap.verify.gate``; ``spice``: the ngspice
    cross-check, when it ran."""
    t, layers = mapping["totals"], mapping["layers"]
    totals = [f"{t['capacitance_pf']:.2f}", f"{t['area_mm2']:.4f}", t["switches"]]
    totals += [t["comparators"], f"{t['energy_per_step_pj']:.1f}", f"{t['time_per_step_ns']:.0f}"]
    banks = []
    for i, L in enumerate(layers):
        bank = L["bank"]
        banks.append([i, L["kind"], bank["switchable_units"]])
        banks[-1] += [f"{float(bank['units_effective'].max()):.2f}"]
        banks[-1] += [f"{bank['ktc_sigma_codes']:.3g}", L["adc_bits"], L["comparators"]]
    checks = [
        [c["check"], _figure(c["value"]), _figure(c["threshold"]), ("FAIL", "pass")[c["passed"]]]
        for c in verify["checks"].values()
    ]
    parts = [(k, f"{v:.2f}") for k, v in t["energy_breakdown_pj"].items()]
    lo, hi = t["published_fj_per_bit_op"]
    per_op = (
        f"{t['macs_per_step']} MACs per step: {t['fj_per_mac']:.2f} fJ per MAC, "
        f"{t['fj_per_bit_op']:.3f} fJ per 1-bit operation (2 per MAC × input bits × weight "
        f"bits; published charge-domain macros: {lo:g}–{hi:g} fJ — a row DAC applies a "
        "multi-bit input in one charge, so per-bit normalisation counts operations it never "
        "performs)"
    )
    sections = [
        ("Target", f"`{mapping['target']}` — model `{run}`"),
        ("Totals", _table("totals", [totals])),
        ("Energy per timestep", table(["part", "pJ / step"], parts) + "\n\n" + per_op),
        ("MAC arrays", _table("macs", _mac_rows(mapping))),
        ("State banks and comparators", _table("banks", banks)),
        ("Verification", _table("checks", checks)),
    ]
    if mc := verify.get("monte_carlo"):
        mc_table = _table("monte_carlo", _mc_rows(mc)) + "\n\n![Monte-Carlo](monte_carlo.png)"
        sections.append(("Monte-Carlo (every effect on; one setting changed per sweep)", mc_table))
        if ablation := _ablation_rows(mc):
            sections.append(("Ablation (nominal chip)", _table("ablation", ablation)))
    if spice:
        sections.append(("ngspice cross-check of mapped pieces", _spice_section(spice)))
    write_report(out / "report.md", f"{run} on {mapping['target']}", sections)
