"""Bit allocation under a memory budget (``qssm search``).

1. Sensitivity: PTQ accuracy of the float model with one role at a time lowered to each candidate
   bit-width, every other site at the highest candidate (the per-role table of ``qssm sweep``).
2. Allocation, greedy on marginal cost: starting from every stored role at the highest
   bit-width, repeatedly lower the role whose next step loses the least accuracy per bit saved,
   until parameters + state fit the budget.  Greedy rather than integer programming: the
   accuracy model is additive over roles (each role measured alone), which is the real
   approximation; with at most a dozen roles and five widths, greedy on marginal cost is within
   one step of the ILP optimum of that model, and it needs no solver.
3. The chosen configuration is trained with QAT like ``qssm quantize``.
"""

import copy
from pathlib import Path

import torch
from brevitas.graph.calibrate import calibration_mode

from .io import write_json
from .quant.footprint import footprint
from .quant.wrap import wrap
from .recipe import QuantConfig, Recipe
from .runs import load_data, load_run_model, n_params
from .sweep import make_point, run_point, run_points, with_bits

SKIP = ("layernorm (float)", "quantizer scales", "conv.buffer", "conv.delay")


def sensitivity_points(recipe: Recipe, roles: list[str], bits: list[int]) -> list[dict]:
    top = max(bits)
    base = with_bits(recipe.quant.model_dump(mode="json"), top)
    out = [make_point(f"search-base-{top}", "search", "base", top, "ptq", recipe.seed, base)]
    for role in roles:
        for b in bits[:-1]:
            q = copy.deepcopy(base)
            q["targets"].append({"roles": [role], "bits": b})
            out.append(
                make_point(f"search-{role}-{b}-of-{top}", "search", role, b, "ptq", recipe.seed, q)
            )
    return out


def allocate(
    elements: dict[str, int],
    fixed_bits: int,
    drop: dict[tuple[str, int], float],
    bits: list[int],
    budget_bits: float,
) -> dict[str, int]:
    """Bits per role so that Σ elements·bits + fixed_bits ≤ budget_bits (greedy, see above).

    ``drop[(role, b)]``: accuracy lost with ``role`` at ``b`` bits (0 at the highest width)."""
    choice = {r: len(bits) - 1 for r in elements}  # index into bits

    def total():
        return fixed_bits + sum(n * bits[choice[r]] for r, n in elements.items())

    while total() > budget_bits:
        moves = []
        for r, i in choice.items():
            if i == 0:
                continue
            saved = elements[r] * (bits[i] - bits[i - 1])
            cost = drop[(r, bits[i - 1])] - drop[(r, bits[i])]
            moves.append((max(cost, 0.0) / saved, -saved, r))
        if not moves:
            raise ValueError(
                f"even with every role at {bits[0]} bits parameters + state take "
                f"{total() / 8192:.2f} KiB, above the budget of {budget_bits / 8192:.2f} KiB; "
                "raise the budget or allow fewer bits (--bits)"
            )
        _, _, r = min(moves)
        choice[r] -= 1
    return {r: bits[i] for r, i in choice.items()}


def search(
    recipe: Recipe,
    run_dir: Path,
    budget_kib: float | None,
    budget_reduction: float | None,
    bits: list[int],
    workers: int,
    progress: bool,
) -> tuple[Recipe, dict]:
    """Returns (the recipe with the chosen ``quant``, the search record for the report).
    ``run_dir`` holds the float model (``float.*``); the budget is in KiB or a reduction factor
    against float32."""
    bits = sorted(set(bits))
    write_json(run_dir / "recipe.json", recipe.model_dump(mode="json"))
    base_point = sensitivity_points(recipe, [], bits)[0]
    base_acc = float(run_point(str(run_dir), base_point)["accuracy"])
    fp = _footprint(recipe, run_dir, base_point)
    budget_bits = (
        budget_kib * 8192 if budget_kib is not None else fp["float32_bits"] / budget_reduction
    )
    elements = {  # stored roles the recipe quantizes (float ones stay float)
        r: e["elements"]
        for r, e in fp["per_role"].items()
        if r not in SKIP and e["elements"] and e["bits"] == [max(bits)]
    }
    roles = sorted(elements)
    rows = run_points(
        run_dir, sensitivity_points(recipe, roles, bits)[1:], workers, "local", None, progress
    )
    drop = {(r, max(bits)): 0.0 for r in roles}
    drop.update(
        {(row["config"], int(row["bits"])): base_acc - float(row["accuracy"]) for row in rows}
    )
    fixed = fp["total_bits"] - sum(n * max(bits) for n in elements.values())  # not allocated
    chosen = allocate(elements, fixed, drop, bits, budget_bits)
    quant = with_bits(recipe.quant.model_dump(mode="json"), max(bits))
    quant["targets"] += [{"roles": [role], "bits": b} for role, b in chosen.items()]
    record = {
        "budget_bits": budget_bits,
        "float32_bits": fp["float32_bits"],
        "base_accuracy": base_acc,
        "chosen_bits": chosen,
        "predicted_total_bits": fixed + sum(elements[r] * b for r, b in chosen.items()),
        "accuracy_drop": {f"{r}@{b}": round(d, 4) for (r, b), d in sorted(drop.items())},
    }
    return recipe.model_copy(update={"quant": QuantConfig.model_validate(quant)}), record


def _footprint(recipe: Recipe, run_dir: Path, point: dict) -> dict:
    """Footprint of ``point``'s configuration (calibrated on two sequences, so that every
    quantizer's scales exist and are counted)."""
    model, _ = load_run_model(run_dir, "float")
    float_params = n_params(model)
    model, table = wrap(model, QuantConfig.model_validate(point["quant"]))
    model.train()
    with calibration_mode(model), torch.no_grad():
        model(load_data(recipe).train.x[:2], "recurrent")
    return footprint(model, table, float_params)
