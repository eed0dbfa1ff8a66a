"""Roles: the names recipes use for quantizable tensors, and how a recipe's ``quant`` section
resolves to one quantizer spec per site (``default`` first, then ``targets`` in order, later
entries overriding earlier ones)."""

import dataclasses
import math
import re
from dataclasses import dataclass

ROLES = {
    "all": (
        "encoder.weight",
        "encoder.bias",
        "decoder.weight",
        "decoder.bias",
        "linear.weight",
        "linear.bias",
        "act.input",
        "act.output",
    ),
    "s4d": ("ssm.A", "ssm.B", "ssm.C", "ssm.D", "ssm.dt", "ssm.state", "ssm.output"),
    "mingru": (
        "gru.Wz",
        "gru.Wh",
        "gru.bz",
        "gru.bh",
        "gru.gate",
        "gru.cand",
        "gru.state",
        "gru.output",
    ),
    "mgrade": ("conv.weight", "conv.delay"),
}
ALL_ROLES = tuple(r for group in ROLES.values() for r in group)
UNSIGNED_ROLES = ("gru.gate",)  # z_t ∈ [0, 1]: an unsigned grid unless the recipe says otherwise
# dt is an intermediate of the continuous parameterization (Ā and B̄ are what is stored), and a
# linear grid over dt ∈ [1e-3, 1e-1] destroys the slow modes: quantized only when a target names it
EXPLICIT_ROLES = ("ssm.dt",)


@dataclass(frozen=True)
class ResolvedSpec:
    """The quantizer of one site after merging the recipe's default and targets."""

    bit_width: int
    narrow: bool
    levels: int
    signed: bool
    symmetric: bool
    granularity: str
    observer: str
    percentile: float
    scale: str
    complex: str
    scale_dtype: str = "float32"

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def replace(self, **changes) -> "ResolvedSpec":
        return dataclasses.replace(self, **changes)


# fields a ResolvedSpec takes from the merged recipe spec as they are (grid and sign are derived)
COPIED = ("symmetric", "granularity", "observer", "percentile", "scale", "complex", "scale_dtype")


def grid(bits: int | None, levels: int | None, narrow_range: bool) -> tuple[int, bool, int]:
    """(bit width, narrow range, number of levels).  ``levels`` must be a Brevitas integer grid:
    2^b (b bits) or 2^b - 1 (b bits, narrow range: 3 = ternary, 7, 15, …)."""
    if levels is None:
        return bits, narrow_range, 2**bits - int(narrow_range)
    b = math.ceil(math.log2(levels))
    if levels == 2**b:
        return b, False, levels
    if levels == 2**b - 1:
        return b, True, levels
    raise ValueError(
        f"levels={levels} is not an integer grid Brevitas can represent; use 2^b or 2^b - 1 "
        "levels (2, 3, 4, 7, 8, 15, 16, …)"
    )


def target_matches(target, role: str, module: str) -> bool:
    if role not in target.roles:
        return False
    if target.modules is None:
        return True
    return re.fullmatch(target.modules.removeprefix("re:"), module) is not None


def resolve(quant, sites: list[tuple[str, str]]) -> dict[tuple[str, str], ResolvedSpec | None]:
    """Spec per (module name, role) site; ``None`` where the site stays float.

    Raises ValueError naming ``quant.targets[i]`` when a target matches no site of this model."""
    merged = {site: quant.default.model_dump() for site in sites}
    for site in sites:
        if site[1] in EXPLICIT_ROLES:
            merged[site]["enabled"] = False
    for i, target in enumerate(quant.targets):
        hits = [s for s in sites if target_matches(target, s[1], s[0])]
        if not hits:
            present = sorted({r for _, r in sites})
            where = f" in modules matching {target.modules!r}" if target.modules else ""
            if quant.fold_b and "ssm.B" in target.roles:
                where += " (quant.fold_b folds ssm.B into ssm.C)"
            raise ValueError(
                f"quant.targets[{i}]: roles {list(target.roles)}{where} match nothing in this "
                f"model; its roles are: {', '.join(present)}"
            )
        override = target.model_dump(exclude_none=True, exclude={"roles", "modules"})
        if "bits" in override:  # a grid given one way replaces one given the other way
            override.setdefault("levels", None)
        if "levels" in override:
            override.setdefault("bits", None)
        for s in hits:
            merged[s].update(override)
            if s[1] in EXPLICIT_ROLES and "enabled" not in override:
                merged[s]["enabled"] = True
    out = {}
    for (module, role), spec in merged.items():
        if not spec["enabled"]:
            out[(module, role)] = None
            continue
        bit_width, narrow, levels = grid(spec["bits"], spec["levels"], spec["narrow_range"])
        signed = spec["signed"]
        if signed is None:  # 1-bit grids are {0, 1}
            signed = role not in UNSIGNED_ROLES and bit_width > 1
        out[(module, role)] = ResolvedSpec(
            bit_width=bit_width,
            narrow=narrow,
            levels=levels,
            signed=signed and spec["symmetric"],
            **{k: spec[k] for k in COPIED},
        )
    return out
