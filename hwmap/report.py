"""``hw/report.md`` of ``qssm map-to-hw``: mapping tables, verification, Monte-Carlo plot."""

from pathlib import Path

import matplotlib.pyplot as plt

from qssm.report import save_figure, table, write_report


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
            xs = [p[0] for p in pts]
            ax.errorbar(
                xs,
                [100 * p[1]["mean"] for p in pts],
                [100 * p[1]["std"] for p in pts],
                marker="o",
                ms=4,
                capsize=3,
                label=model,
            )
        ax.set(xlabel=label, ylabel="test accuracy (%)", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _layer_rows(mapping: dict) -> list[list]:
    rows = []
    for i, layer in enumerate(mapping["layers"]):
        for key in ("gate_mac", "cand_mac", "readout_mac"):
            if key in layer:
                m = layer[key]
                rows.append(
                    [
                        i,
                        key.replace("_mac", ""),
                        f"{m['fan_in']} × {m['outputs']}",
                        m["units_per_side"],
                        m["tiles"],
                        m["input_bits"],
                        f"{m['c_line_ff']:.1f}",
                        f"{1e6 * m['v_per_unit']:.1f}",
                        f"{m['ktc_sigma_units']:.2f}",
                    ]
                )
    return rows


def write_hw_report(out: Path, run: str, mapping: dict, verify: dict) -> None:
    t = mapping["totals"]
    totals = table(
        [
            "capacitance (pF)",
            "area (mm²)",
            "switches",
            "comparators",
            "energy / step (pJ)",
            "time / step (ns)",
        ],
        [
            [
                f"{t['capacitance_pf']:.2f}",
                f"{t['area_mm2']:.4f}",
                t["switches"],
                t["comparators"],
                f"{t['energy_per_step_pj']:.1f}",
                f"{t['time_per_step_ns']:.0f}",
            ]
        ],
    )
    energy = table(
        ["part", "pJ / step"], [[k, f"{v:.2f}"] for k, v in t["energy_breakdown_pj"].items()]
    )
    layers = table(
        [
            "layer",
            "MAC",
            "fan-in × out",
            "units/side",
            "tiles",
            "input bits",
            "C_line (fF)",
            "µV / acc unit",
            "kT/C σ (acc units)",
        ],
        _layer_rows(mapping),
    )
    banks = table(
        [
            "layer",
            "kind",
            "switchable units",
            "effective units",
            "kT/C σ (state codes)",
            "ADC bits",
            "comparators",
        ],
        [
            [
                i,
                L["kind"],
                L["bank"]["switchable_units"],
                f"{float(L['bank']['units_effective'].max()):.2f}",
                f"{L['bank']['ktc_sigma_codes']:.3g}",
                L["adc_bits"],
                L["comparators"],
            ]
            for i, L in enumerate(mapping["layers"])
        ],
    )
    ideal = verify["sim_ideal_vs_intref"]
    checks = table(
        ["check", "result"],
        [
            [
                "fake-quant vs intref: same predictions",
                f"{100 * verify['fakequant_vs_intref']['prediction_agreement']:.2f} %",
            ],
            [
                "fake-quant vs intref: largest code difference per op",
                f"{verify['fakequant_vs_intref']['max_code_diff']} LSB",
            ],
            [
                "onnxruntime vs intref: identical codes",
                f"{100 * verify['onnx_vs_intref']['code_agreement']:.2f} %",
            ],
            [
                "step vs sequence graph",
                f"{100 * verify['step_vs_sequence']['code_agreement']:.2f} %",
            ],
            [
                "ideal simulator vs intref: identical decisions",
                f"{100 * ideal['decision_agreement']:.2f} % of {ideal['decisions']}",
            ],
            ["ideal simulator vs intref: identical logits", str(ideal["logits_identical"])],
        ],
    )
    sections = [
        ("Target", f"`{mapping['target']}` — model `{run}`"),
        ("Totals", totals),
        ("Energy per timestep", energy),
        ("MAC arrays", layers),
        ("State banks and comparators", banks),
        ("Verification", checks),
    ]
    mc = verify.get("monte_carlo")
    if mc:
        rows = [
            [
                r["sweep"],
                r["unit_ff"],
                r["offset_mv"],
                f"{100 * r['mean']:.2f}",
                f"{100 * r['std']:.2f}",
                r["seeds"],
                r["sequences"],
            ]
            for r in mc
        ]
        sections.append(
            (
                "Monte-Carlo (all non-idealities on)",
                table(
                    [
                        "sweep",
                        "C_u (fF)",
                        "offset σ (mV)",
                        "mean acc (%)",
                        "std (%)",
                        "chips",
                        "sequences",
                    ],
                    rows,
                )
                + "\n\n![Monte-Carlo](monte_carlo.png)",
            )
        )
    write_report(out / "report.md", f"{run} on {mapping['target']}", sections)
