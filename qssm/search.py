"""Bit allocation under a memory budget (``qssm search``), with QAT in the loop.

The design space: a bit-width per group of stored roles (each role with ≥ 2 % of the stored
elements is its own group; the small ones — biases, D, a tiny encoder — share one), and the
structural choices that move accuracy most: S4D ``fold_b``, the S4D state's scale granularity,
how scales are stored (``scale_dtype`` of the default quantizer) and the activation bits.
Every configuration is a recipe ``quant`` section, counted by the same footprint as ``qssm
quantize``: the footprint of a structure is measured once on the quantized model, and is then
linear in the groups' bits (``Space.bits_of``; checked against every evaluated point).

The accuracy estimate is a short QAT (``short_epochs``, its own cosine schedule) of the float
model, scored on a held-out tenth of the training split: PTQ sensitivity, measured one role at a
time and summed, is the wrong model for a recurrent network, where 8-bit PTQ alone loses tens of
points and the state and Ā interact.  The search is a regularized evolution over the *tight*
configurations (those that fit the budget and cannot raise any group one step without leaving
it).  The first generation is the recipe's own allocation and the uniform one (every group at
one width), each made to fit, and their neighbours — random tight configurations are nearly all
poor (some role at 2 bits) and waste the evaluations; then come children of tournament winners.
A neighbour is one move away (one group one width up or down, or one structural choice changed),
projected back onto the tight set with the moved group kept.  The best ``finalists`` get a
longer QAT (3 × ``short_epochs``) on the same split; the winner is trained with the recipe's
full PTQ + QAT like ``qssm quantize``, on the whole training split, and reported on the test
split, which no selection step has seen.

For a hardware family the budget can also be a target's capacitor area (``chip``: a callable
the CLI builds from ``hwmap``, calibrated quantized model → its mapped area and capacitance;
this module knows nothing of the hardware).  Area is not linear in bits (a weight of b bits
takes 2^(b−1) unit capacitors per side), so it is measured through the mapping, per
configuration and cached: at a base configuration (the recipe's widths) and with each group
moved alone to each width; a configuration's area is the base plus each group's change
(``Space.area_of``, checked against a direct measurement of every evaluated point).  A width the
target cannot map (a weight with more units than a cell holds) leaves the space.

Every evaluation is a sweep point (``points/<id>.json``): it resumes, caches and runs in
``--workers`` processes or on Ray.  ``validate`` configurations spread over the estimate's range
are also trained with the full QAT and scored on the test split: the Spearman rank correlation
of the estimate (and of PTQ accuracy) against that measured accuracy goes into the record.
"""

import copy
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from brevitas.graph.calibrate import calibration_mode
from tqdm import tqdm

from .io import write_json
from .quant.footprint import footprint
from .quant.wrap import wrap
from .recipe import QuantConfig, Recipe
from .runs import load_data, load_run_model, n_params
from .sweep import make_point, run_points

SKIP = ("layernorm (float)", "quantizer scales", "conv.buffer", "conv.delay")
SMALL = 0.02  # roles below this share of the stored elements form one group
HOLDOUT = 0.1  # the search scores candidates on this last fraction of the training split
ACT_ROLES = {"s4d": ["ssm.output"], "s4d_real": ["ssm.output"], "mingru": ["gru.output"]}


@dataclass(frozen=True)
class Config:
    bits: tuple[int, ...]  # per group, in Space.groups order
    structure: tuple  # values of Space.choices, in order

    def label(self, space: "Space") -> str:
        stored = space.elements(self.structure)
        parts = [
            f"{g[0] if len(g) == 1 else 'small'}={b}"
            for g, b in zip(space.groups, self.bits, strict=True)
            if any(r in stored for r in g)
        ]
        parts += [f"{k}={v}" for k, v in zip(space.choices, self.structure, strict=True)]
        return ";".join(parts)


class Space:
    """The configurations of a recipe's model and their footprints (see the module doc)."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir,
        bits: list[int],
        act_bits: list[int],
        chip: Callable[[torch.nn.Module], dict] | None = None,
    ):
        """``chip``: calibrated quantized model → {"area_mm2", "capacitance_pf"} of its mapping
        onto a target (raising ValueError for a model the target cannot map), or None."""
        self.recipe, self.widths, self.chip = recipe, sorted(set(bits)), chip
        self._chips: dict[str, dict | None] = {}
        self._areas: dict[tuple, tuple[float, np.ndarray]] = {}
        self._recipe_config: Config | None = None
        family = recipe.model.family
        self.choices: dict[str, list] = {}
        if family == "s4d":
            self.choices["fold_b"] = [False, True]
            self.choices["state"] = ["per_channel", "per_element"]
        self.choices["scales"] = sorted({"float16", "po2_3bit", recipe.quant.default.scale_dtype})
        self.act_roles = ["act.input", "act.output", *ACT_ROLES.get(family, [])]
        if act_bits and not family.endswith("_hw"):  # a hardware family's activations are fixed
            self.choices["act"] = sorted(set(act_bits))
        self.structures = list(itertools.product(*self.choices.values()))
        model, _ = load_run_model(run_dir, "float")
        self._model, self._float_params = model, n_params(model)
        self._x = load_data(recipe).train.x[:2]
        self._fixed: dict[tuple, int] = {}
        self._elements: dict[tuple, dict[str, int]] = {}
        # the groups, from the stored roles of the structure that stores the most (B̄ unfolded)
        self.groups: list[tuple[str, ...]] = []
        top = self._base(self.structures[0])
        top["default"].update(bits=max(self.widths), levels=None)
        for t in top["targets"]:
            if t.get("bits") is not None and not set(t["roles"]) & set(self.act_roles):
                t.update(bits=max(self.widths), levels=None)
        fp, _ = self._footprint(top)
        self.float32_bits = fp["float32_bits"]
        elements = self._stored(fp)
        total = sum(elements.values())
        big = [(r,) for r in sorted(elements) if elements[r] >= SMALL * total]
        small = tuple(sorted(r for r in elements if elements[r] < SMALL * total))
        self.groups = big + ([small] if small else [])

    def _base(self, structure) -> dict:
        q = copy.deepcopy(self.recipe.quant.model_dump(mode="json"))
        s = dict(zip(self.choices, structure, strict=True))
        if "fold_b" in s:
            q["fold_b"] = s["fold_b"]
        q["default"]["scale_dtype"] = s["scales"]
        if "state" in s:
            q["targets"].append({"roles": ["ssm.state"], "granularity": s["state"]})
        if "act" in s:
            q["targets"].append({"roles": self.act_roles, "bits": s["act"], "levels": None})
        return q

    def quant(self, config: Config) -> dict:
        """The recipe's ``quant`` section for ``config``."""
        q = self._base(config.structure)
        for group, b in zip(self.groups, config.bits, strict=True):
            roles = [r for r in group if r in self.elements(config.structure)]
            if roles:  # (ssm.B is not stored when B̄ is folded)
                q["targets"].append({"roles": roles, "bits": b, "levels": None})
        return q

    def _footprint(self, quant: dict) -> tuple[dict, dict]:
        return measure_footprint(self._model, self._float_params, quant, self._x)

    def recipe_config(self) -> Config:
        """The recipe's own allocation and structure (widths rounded to the nearest candidate;
        the search's first candidate is the tight configuration nearest to it)."""
        if self._recipe_config is None:
            self._recipe_config = self._recipe_config_measured()
        return self._recipe_config

    def _recipe_config_measured(self) -> Config:
        fp, table = self._footprint(self.recipe.quant.model_dump(mode="json"))
        bits = []
        for g in self.groups:
            b = max((max(fp["per_role"][r]["bits"]) for r in g if r in fp["per_role"]), default=32)
            bits.append(min(self.widths, key=lambda w, b=b: (abs(w - b), -w)))
        site = {k.rpartition(":")[2]: v for k, v in table.items()}  # last of each site name
        now = {
            "fold_b": self.recipe.quant.fold_b,
            "state": site.get("state", {}).get("granularity"),
            "scales": self.recipe.quant.default.scale_dtype,
            "act": site.get("input", {}).get("bit_width"),
        }
        structure = tuple(
            now[k] if now[k] in options else options[-1] for k, options in self.choices.items()
        )
        return Config(tuple(bits), structure)

    def _stored(self, fp: dict) -> dict[str, int]:
        top = max(self.widths)
        return {
            r: e["elements"]
            for r, e in fp["per_role"].items()
            if r not in SKIP and e["elements"] and e["bits"] == [top]
        }

    def elements(self, structure) -> dict[str, int]:
        """Stored elements per allocated role of ``structure`` (measured once)."""
        if structure not in self._elements:
            top, q = max(self.widths), self._base(structure)
            q["targets"].append({"roles": [r for g in self.groups for r in g], "bits": top})
            fp, _ = self._footprint(q)
            elements = self._stored(fp)
            self._elements[structure] = elements
            self._fixed[structure] = fp["total_bits"] - top * sum(elements.values())
        return self._elements[structure]

    def bits_of(self, config: Config) -> int:
        """The footprint (``footprint.total_bits``) of ``config``."""
        n = self.group_elements(config.structure)
        return int(self._fixed[config.structure] + np.dot(config.bits, n))

    def chip_of(self, quant: dict) -> dict | None:
        """``chip``'s figures of ``quant`` on its calibrated model (None: the target cannot map
        it); measured once per configuration."""
        key = json.dumps(quant, sort_keys=True)
        if key not in self._chips:
            model, _ = calibrated(self._model, quant, self._x)
            try:
                self._chips[key] = self.chip(model)
            except ValueError:
                self._chips[key] = None
        return self._chips[key]

    def _area_table(self, structure) -> tuple[float, np.ndarray]:
        """(base area, (groups, widths) changes): the area of a configuration of ``structure``
        is the base plus each group's change at its width (inf: the target cannot map it)."""
        if structure not in self._areas:
            bits = self.recipe_config().bits
            base = self.chip_of(self.quant(Config(bits, structure)))
            if base is None:  # the recipe's widths do not map: try the narrowest
                bits = (self.widths[0],) * len(self.groups)
                base = self.chip_of(self.quant(Config(bits, structure)))
            if base is None:
                model, _ = calibrated(self._model, self.quant(Config(bits, structure)), self._x)
                self.chip(model)  # raises the target's reason
            table = np.zeros((len(self.groups), len(self.widths)))
            for g, j in itertools.product(range(len(self.groups)), range(len(self.widths))):
                if self.widths[j] != bits[g]:
                    moved = bits[:g] + (self.widths[j],) + bits[g + 1 :]
                    got = self.chip_of(self.quant(Config(moved, structure)))
                    table[g, j] = np.inf if got is None else got["area_mm2"] - base["area_mm2"]
            self._areas[structure] = (base["area_mm2"], table)
        return self._areas[structure]

    def area_of(self, config: Config) -> float:
        """The capacitor area (mm²) of ``config`` on the target (inf: it cannot map it)."""
        base, table = self._area_table(config.structure)
        idx = [self.widths.index(b) for b in config.bits]
        return float(base + table[np.arange(len(idx)), idx].sum())

    def group_elements(self, structure) -> np.ndarray:
        """How many stored elements each group of ``structure`` holds."""
        elements = self.elements(structure)
        return np.array([sum(elements.get(r, 0) for r in g) for g in self.groups])

    def totals(self, structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every width index per group of ``structure`` (rows), with its footprint in bits and
        its area in mm² (0 without a ``chip``)."""
        w, n = np.array(self.widths), self.group_elements(structure)
        idx = np.array(list(itertools.product(range(len(w)), repeat=len(n))))
        bits = self._fixed[structure] + w[idx] @ n
        area = np.zeros(len(idx))
        if self.chip is not None:
            base, table = self._area_table(structure)
            area = base + table[np.arange(len(n)), idx].sum(1)
        return idx, bits, area

    def tight(self, budget_bits: float, budget_area: float = math.inf) -> list[Config]:
        """Every configuration that fits ``budget_bits`` and ``budget_area`` (mm²) and cannot
        raise one group by one width without leaving one of them."""
        w, top = np.array(self.widths), len(self.widths) - 1
        out = []
        for s in self.structures:
            idx, bits, area = self.totals(s)
            n = self.group_elements(s)
            nxt = np.minimum(idx + 1, top)
            raise_bits = (w[nxt] - w[idx]) * n  # 0 at the top width or for an empty group
            up = bits[:, None] + raise_bits <= budget_bits
            if self.chip is not None:
                _, table = self._area_table(s)
                g = np.arange(len(n))
                with np.errstate(invalid="ignore"):  # inf − inf: neither width maps
                    up &= area[:, None] + table[g, nxt] - table[g, idx] <= budget_area
            ok = (bits <= budget_bits) & (area <= budget_area) & ~((raise_bits > 0) & up).any(1)
            # an empty group (ssm.B with B̄ folded) takes the top width only: one config each
            ok &= (idx[:, n == 0] == top).all(1)
            out += [Config(tuple(int(v) for v in w[i]), s) for i in idx[ok]]
        return out


def calibrated(model, quant: dict, x):
    """(a copy of the float ``model`` quantized as ``quant`` and calibrated on ``x``, so that
    every quantizer's scales exist, its site table)."""
    model, table = wrap(copy.deepcopy(model), QuantConfig.model_validate(quant))
    model.train()
    with calibration_mode(model), torch.no_grad():
        model(x, "recurrent")
    return model.eval(), table


def measure_footprint(model, float_params: int, quant: dict, x) -> tuple[dict, dict]:
    """Footprint of ``quant`` on a copy of the float ``model`` (see ``calibrated``)."""
    model, table = calibrated(model, quant, x)
    return footprint(model, table, float_params), table


def moves(config: Config, space: Space) -> list[tuple[Config, int | None]]:
    """Every single move from ``config``: one group one width up or down, or one structural
    choice changed; with the moved group (None for a structural change)."""
    out = []
    for g, b in enumerate(config.bits):
        j = space.widths.index(b)
        for k in (j - 1, j + 1):
            if 0 <= k < len(space.widths):
                bits = config.bits[:g] + (space.widths[k],) + config.bits[g + 1 :]
                out.append((Config(bits, config.structure), g))
    for i, options in enumerate(space.choices.values()):
        for o in options:
            if o != config.structure[i]:
                structure = config.structure[:i] + (o,) + config.structure[i + 1 :]
                out.append((Config(config.bits, structure), None))
    return out


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""

    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties: the mean of their ranks
            r[v == value] = r[v == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def point(space: Space, config: Config, stage: str, epochs: int | None, holdout: float) -> dict:
    """The sweep point that trains ``config`` (``epochs`` of QAT; None: the recipe's)."""
    label = config.label(space)
    digest = hashlib.sha256(label.encode()).hexdigest()[:10]
    tag = stage if epochs is None else f"qat{epochs}"
    pid = f"search-{tag}-{'holdout' if holdout else 'test'}-{digest}"
    bits = "/".join(map(str, config.bits))
    return make_point(
        pid,
        "search",
        label,
        bits,
        stage,
        space.recipe.seed,
        space.quant(config),
        qat_epochs=epochs,
        holdout=holdout,
    )


class Search:
    """One search in ``run_dir`` (which holds the float model); see the module doc."""

    def __init__(self, space: Space, run_dir, budget_bits: float, opts: dict, budget_area=math.inf):
        self.space, self.run_dir, self.budget, self.opts = space, run_dir, budget_bits, opts
        self.budget_area = budget_area
        self.pool = space.tight(budget_bits, budget_area)
        self._idx = np.array([[space.widths.index(b) for b in c.bits] for c in self.pool])
        self._struct = np.array([space.structures.index(c.structure) for c in self.pool])
        self._bits = np.array([space.bits_of(c) for c in self.pool])
        if not self.pool:
            raise ValueError(self._nothing_fits())

    def _nothing_fits(self) -> str:
        """Why no configuration fits the budgets, with the smallest that would."""
        rows = [self.space.totals(s)[1:] for s in self.space.structures]
        bits, area = (np.concatenate(v) for v in zip(*rows, strict=True))
        low = min(self.space.widths)
        if bits.min() > self.budget:
            return (
                f"even with every stored role at {low} bits the footprint is "
                f"{bits.min() / 8192:.2f} KiB, above the budget of {self.budget / 8192:.2f} KiB; "
                "raise the budget or allow fewer bits (--bits)"
            )
        if area.min() > self.budget_area:
            least = math.ceil(area.min() * 1e6) / 1e6  # rounded up: a budget of it fits
            return (
                f"the smallest capacitor area of any configuration the target maps is "
                f"{least:.6f} mm², above the budget of {self.budget_area:.6f} mm²; raise "
                f"--area-budget-mm2 to at least {least:.6f} or allow fewer bits (--bits)"
            )
        least = area[bits <= self.budget].min()
        return (
            f"no configuration fits both budgets: within {self.budget / 8192:.2f} KiB the "
            f"smallest capacitor area is {least:.6f} mm², above {self.budget_area:.6f} mm²; "
            "raise either budget"
        )

    def evaluate(self, configs: list[Config], stage: str, epochs, holdout: float) -> list[dict]:
        """The rows of ``configs`` trained and scored as a sweep point each."""
        todo = [point(self.space, c, stage, epochs, holdout) for c in configs]
        if self.space.chip is not None:
            for c in configs:  # the area model must be the area, before anything is trained
                got = self.space.chip_of(self.space.quant(c))
                if got is None or not math.isclose(got["area_mm2"], self.space.area_of(c)):
                    raise RuntimeError(
                        f"search: {c.label(self.space)} has a capacitor area of "
                        f"{got and got['area_mm2']} mm², predicted {self.space.area_of(c)}"
                    )
        o = self.opts
        rows = run_points(self.run_dir, todo, o["workers"], o["executor"], o["address"], False)
        for c, row in zip(configs, rows, strict=True):
            if "failed" not in row and int(row["total_bits"]) != self.space.bits_of(c):
                raise RuntimeError(  # the footprint model must be the footprint
                    f"search: {row['id']} has a footprint of {row['total_bits']} bits, "
                    f"predicted {self.space.bits_of(c)}"
                )
        return rows

    def area(self, config: Config) -> float | None:
        """``config``'s capacitor area in mm² (None without a target)."""
        return None if self.space.chip is None else self.space.area_of(config)

    def nearest(self, config: Config, keep: int | None = None) -> Config:
        """The tight configuration closest to ``config``: the same structure, group ``keep``
        at its width (when such exist), then the fewest width steps, then the larger
        footprint."""
        idx = np.array([self.space.widths.index(b) for b in config.bits])
        ok = self._struct == self.space.structures.index(config.structure)
        if keep is not None and (ok & (self._idx[:, keep] == idx[keep])).any():
            ok &= self._idx[:, keep] == idx[keep]
        if not ok.any():
            ok[:] = True
        steps = np.abs(self._idx - idx).sum(1) + np.where(ok, 0, 10**6)
        best = np.flatnonzero(steps == steps.min())
        return self.pool[best[np.argmax(self._bits[best])]]

    def neighbours(self, config: Config) -> list[Config]:
        """The distinct tight configurations one move from ``config`` (each move projected
        back onto the tight set, keeping the moved group)."""
        out = [self.nearest(c, g) for c, g in moves(config, self.space)]
        return [c for c in dict.fromkeys(out) if c != config]

    def evolve(self, start: Config, bar) -> dict[Config, float]:
        """Estimated accuracy of every configuration the evolution evaluated."""
        o, space = self.opts, self.space
        rng = np.random.default_rng(space.recipe.seed)
        n, size = o["evaluations"], max(o["workers"], 1)
        uniform = min(  # every group at one width, the one closest to the budget(s)
            (Config((w,) * len(space.groups), start.structure) for w in space.widths),
            key=lambda c: (
                abs(space.bits_of(c) - self.budget) if math.isfinite(self.budget) else 0,
                abs(self.area(c) - self.budget_area) if math.isfinite(self.budget_area) else 0,
            ),
        )
        seeds = [self.nearest(start), self.nearest(uniform)]
        first = [*seeds, *self.neighbours(seeds[0]), *self.neighbours(seeds[1])]
        batch = list(dict.fromkeys(first))[: min(o["population"], n)]
        scores: dict[Config, float] = {}
        while batch:
            rows = self.evaluate(batch, "qat", o["short_epochs"], HOLDOUT)
            for c, r in zip(batch, rows, strict=True):
                scores[c] = float(r.get("accuracy", 0.0))  # a diverged QAT scores 0
            bar.update(len(batch))
            batch = []
            for _ in range(20 * size):
                if len(scores) + len(batch) >= n or len(batch) >= size:
                    break
                seen = list(scores)
                rivals = [seen[i] for i in rng.choice(len(seen), min(3, len(seen)), False)]
                parent = max(rivals, key=lambda c: (scores[c], space.bits_of(c)))
                fresh = [c for c in self.neighbours(parent) if c not in scores and c not in batch]
                if fresh:
                    batch.append(fresh[int(rng.integers(len(fresh)))])
        return scores

    def run(self, start: Config) -> dict:
        o, space = self.opts, self.space
        steps = o["evaluations"] + o["finalists"] + o["validate"] * 2
        with tqdm(total=steps, desc="search", disable=None if o["progress"] else True) as bar:
            scores = self.evolve(start, bar)
            ranked = sorted(scores, key=lambda c: (-scores[c], -space.bits_of(c)))
            finalists = ranked[: o["finalists"]]
            longer = self.evaluate(finalists, "qat", 3 * o["short_epochs"], HOLDOUT)
            bar.update(len(finalists))
            final = {
                c: float(r.get("accuracy", 0.0)) for c, r in zip(finalists, longer, strict=True)
            }
            # no finalists: the best estimate
            best = max(finalists or ranked[:1], key=lambda c: (final.get(c, 0), scores[c]))
            validation = self.validate(ranked, scores, bar) if o["validate"] else None
        return {
            "chosen": best,
            "evaluated": [
                {
                    "config": c.label(space),
                    "bits": space.bits_of(c),
                    "area_mm2": self.area(c),
                    "estimate": scores[c],
                    "longer": final.get(c),
                }
                for c in ranked
            ],
            "validation": validation,
        }

    def validate(self, ranked: list[Config], scores: dict, bar) -> dict:
        """The estimate and PTQ against the full QAT on the test split, for ``validate``
        configurations spread evenly over the estimate's ranking."""
        k = min(self.opts["validate"], len(ranked))
        picks = [ranked[i] for i in np.linspace(0, len(ranked) - 1, k).round().astype(int)]
        picks = list(dict.fromkeys(picks))
        full = self.evaluate(picks, "qat", self.opts["validate_epochs"], 0.0)
        ptq = self.evaluate(picks, "ptq", None, 0.0)
        bar.update(2 * len(picks))
        measured = [float(r.get("accuracy", 0.0)) for r in full]
        est = [scores[c] for c in picks]
        ptq_acc = [float(r["accuracy"]) for r in ptq]
        return {
            "epochs": self.opts["validate_epochs"],
            "configs": [
                {
                    "config": c.label(self.space),
                    "bits": self.space.bits_of(c),
                    "area_mm2": self.area(c),
                    "estimate": e,
                    "ptq": p,
                    "measured": m,
                }
                for c, e, p, m in zip(picks, est, ptq_acc, measured, strict=True)
            ],
            "spearman_estimate": spearman(est, measured),
            "spearman_ptq": spearman(ptq_acc, measured),
        }


def search(
    recipe: Recipe,
    run_dir: Path,
    budget_kib,
    budget_reduction,
    opts: dict,
    chip: Callable[[torch.nn.Module], dict] | None = None,
    budget_area_mm2: float | None = None,
):
    """Returns (the recipe with the chosen ``quant``, the search record for the report).
    ``run_dir`` holds the float model (``float.*``); the memory budget is in KiB or a reduction
    factor against float32 (or none); with ``chip`` (see ``Space``) only configurations the
    target maps are searched, within ``budget_area_mm2`` of capacitor area when given."""
    write_json(run_dir / "recipe.json", recipe.model_dump(mode="json"))
    space = Space(recipe, run_dir, opts["bits"], opts["act_bits"], chip)
    f32 = space.float32_bits
    budget = math.inf
    if budget_kib is not None or budget_reduction is not None:
        budget = budget_kib * 8192 if budget_kib is not None else f32 / budget_reduction
    area = math.inf if budget_area_mm2 is None else budget_area_mm2
    start = time.perf_counter()
    finder = Search(space, run_dir, budget, opts, area)
    found = finder.run(space.recipe_config())
    chosen = found["chosen"]
    record = {
        "budget_bits": budget if math.isfinite(budget) else None,
        "float32_bits": f32,
        "chosen": chosen.label(space),
        "chosen_bits": {
            r: b
            for g, b in zip(space.groups, chosen.bits, strict=True)
            for r in g
            if r in space.elements(chosen.structure)
        },
        "structure": dict(zip(space.choices, chosen.structure, strict=True)),
        "predicted_total_bits": space.bits_of(chosen),
        "candidates": len(finder.pool),
        "short_epochs": opts["short_epochs"],
        "seconds": time.perf_counter() - start,  # the search, before the chosen one's PTQ + QAT
        **{k: v for k, v in found.items() if k != "chosen"},
    }
    if chip is not None:  # the chosen and the recipe's own allocation, on calibrated models
        record["area"] = {
            "budget_mm2": budget_area_mm2,
            "chosen": space.chip_of(space.quant(chosen)),
            "recipe": space.chip_of(recipe.quant.model_dump(mode="json")),
        }
    quant = QuantConfig.model_validate(space.quant(chosen))
    return recipe.model_copy(update={"quant": quant}), record
