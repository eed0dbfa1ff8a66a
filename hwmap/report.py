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
    "monte_carlo": "sweep | C_u (fF) | offset σ (mV) | mean acc (%) | std (%) | chips | sequences",
    "checks": "check | result | threshold | passed",
    "spice": "layer | piece | mismatch | max diff (mV) | max diff (column LSB) | "
    "with the bank parasitic in z (mV) | decisions agree (simulator / placed threshold) | netlist",
}


def plot_monte_carlo(mc: dict, path: Path) -> None:
    """Accuracy (mean ± std over chips) against unit capacitance and comparator offset."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in (
        (axes[0], "unit_ff", "unit capacitance C_u (fF)"),
        (axes[1], "offset_mv", "trimmed comparator offset σ (mV)"),
    ):
        for model, rows in mc.items():
            pts = sorted((r[key], r) for r in rows if r["sweep"] == key)
            if not pts:
                continue
            mean, std = ([100 * r[k] for _, r in pts] for k in ("mean", "std"))
            ax.errorbar([p[0] for p in pts], mean, std, marker="o", ms=4, capsize=3, label=model)
        ax.set(xlabel=label, ylabel="test accuracy (%)", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


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
        agree = explained = "—"
        if "max_diff_mv_parasitic_in_z" in r:
            explained = f"{r['max_diff_mv_parasitic_in_z']:.4f}"
        if "decision_agreement" in r:
            agree = (
                f"{_figure(r['decision_agreement'])} / {_figure(r['decision_agreement_placed'])}"
            )
        rows.append(
            [r["layer"], r["piece"], ("no", "yes")[r["mismatch"]], f"{r['max_diff_mv']:.4f}"]
            + [f"{r['max_diff_lsb']:.3g}", explained, agree, f"`{r['netlist']}`"]
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
    sections = [
        ("Target", f"`{mapping['target']}` — model `{run}`"),
        ("Totals", _table("totals", [totals])),
        ("Energy per timestep", table(["part", "pJ / step"], parts)),
        ("MAC arrays", _table("macs", _mac_rows(mapping))),
        ("State banks and comparators", _table("banks", banks)),
        ("Verification", _table("checks", checks)),
    ]
    if mc := verify.get("monte_carlo"):
        rows = [
            [r["sweep"], r["unit_ff"], r["offset_mv"], f"{100 * r['mean']:.2f}"]
            + [f"{100 * r['std']:.2f}", r["seeds"], r["sequences"]]
            for r in mc
        ]
        mc_table = _table("monte_carlo", rows) + "\n\n![Monte-Carlo](monte_carlo.png)"
        sections.append(("Monte-Carlo (all non-idealities on)", mc_table))
    if spice:
        sections.append(("ngspice cross-check of mapped pieces", _spice_section(spice)))
    write_report(out / "report.md", f"{run} on {mapping['target']}", sections)
