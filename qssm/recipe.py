"""Recipe schema (pydantic) and loader.

A recipe is one YAML file that drives a whole run.  Validation errors are reported as one line
that names the key path, the bad value and what is allowed, e.g.
``recipes/x.yaml: model.s4d.d_state: Input should be a valid integer, got 'abc'``.
"""

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import DATASETS
from .quant.roles import ALL_ROLES, grid


class RecipeError(ValueError):
    """A recipe that cannot be used; the message says which key and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DataConfig(Section):
    name: str = "smnist5k"
    root: str | None = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; choose one of {', '.join(sorted(DATASETS))}")
        return v


class _ModelBase(Section):
    d_model: int = Field(16, ge=1)
    n_layers: int = Field(1, ge=1)
    pool: Literal["mean", "last"] = "mean"


class S4DModel(_ModelBase):
    family: Literal["s4d", "s4d_real"]
    d_state: int = Field(64, ge=2)
    init: Literal["lin", "inv"] = "lin"
    dt_min: float = Field(1e-3, gt=0)
    dt_max: float = Field(1e-1, gt=0)


class MinGRUModel(_ModelBase):
    family: Literal["mingru", "mingru_hw"]
    mlp_ratio: int = Field(2, ge=1)


class MGradeModel(_ModelBase):
    family: Literal["mgrade", "mgrade_hw"]
    max_delay: int = Field(64, ge=1)
    n_taps: int = Field(4, ge=1)
    sigma: float = Field(0.5, gt=0)
    mlp_ratio: int = Field(2, ge=1)


class CustomModel(Section):
    """A model class of your own (docs/api.md): ``module`` names it as ``package.module:Class``;
    it is built as ``Class(d_input=…, n_classes=…, **options)`` and called as
    ``model(x, mode)``; its quantizable tensors carry role tags."""

    family: Literal["custom"]
    module: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    options: dict[str, Any] = Field(default_factory=dict)


ModelConfig = Annotated[
    S4DModel | MinGRUModel | MGradeModel | CustomModel, Field(discriminator="family")
]


class TrainConfig(Section):
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-2, gt=0)
    ssm_lr: float = Field(1e-3, gt=0)  # SSM parameters (A, dt, B) and delays: lower lr, no decay
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(1.0, gt=0)


class FloatConfig(TrainConfig):
    """Float pre-training, or ``checkpoint:`` a finished run dir whose model is reused.

    ``mode``: ``parallel`` (S4D's FFT convolution, minGRU's log-space scan) or ``recurrent``
    (the step loop; on a CPU it is the faster one for minGRU and mGRADE of small width)."""

    checkpoint: str | None = None
    mode: Literal["parallel", "recurrent"] = "parallel"


class HardwareNoise(Section):
    """Hardware-aware QAT: train with the analog errors of a switched-capacitor target (mismatch,
    kT/C, comparator offset and noise) injected as noise on the gate and candidate MAC outputs and
    on the comparator input, magnitudes from ``qssm map-to-hw``'s mapping (hardware minGRU)."""

    target: str
    unit_ff: float | None = Field(None, gt=0)  # default: the target's unit capacitance
    offset_mv: float | None = Field(None, ge=0)  # default: the target's trimmed offset


class QATConfig(TrainConfig):
    """Quantization-aware training in recurrent mode (the state re-quantized every step)."""

    epochs: int = Field(2, ge=0)
    lr: float = Field(2e-3, gt=0)
    ssm_lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # weight of distillation from the float model: loss = (1 − w)·CE + w·T²·KL(float ‖ quantized)
    # at temperature T = DISTILL_T; the float model runs in its own (fast) float.mode
    distill: float = Field(0.0, ge=0, le=1)
    hardware: HardwareNoise | None = None


class PTQConfig(Section):
    calibration_batches: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)


def _check_spec(spec):
    """Contradictions within one quantizer spec (default or target)."""
    if spec.bits is not None and spec.levels is not None:
        raise ValueError("give either bits or levels, not both")
    if spec.symmetric is False and spec.signed is True:
        raise ValueError(
            "an asymmetric quantizer is unsigned with a zero point; drop `signed` or set "
            "symmetric: true"
        )
    if spec.levels is not None:
        grid(None, spec.levels, False)
    if spec.bits == 1 and (spec.signed or spec.narrow_range):
        raise ValueError("1-bit grids are unsigned {0, 1}: set signed: false, or use levels: 3")
    return spec


Bits = Annotated[int, Field(ge=1, le=32)]
Observer = Literal["minmax", "percentile", "mse"]
# per_element: one scale per element of the S4D state (ssm.state only)
Granularity = Literal["per_tensor", "per_channel", "per_element"]
# po2_<k>bit: powers of two, stored as k-bit exponents below the quantizer's largest (8-bit offset)
PO2_DTYPES = tuple(f"po2_{k}bit" for k in range(1, 7))
ScaleDtype = Literal[
    ("float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn", *PO2_DTYPES)
]


class QuantSpec(Section):
    """The quantizer of every site that no target overrides."""

    bits: Bits | None = None  # 8 when neither bits nor levels is given
    levels: int | None = Field(None, ge=2)  # 2^b or 2^b - 1 (3 = ternary)
    signed: bool | None = None  # None: signed, except unsigned roles (gru.gate)
    symmetric: bool = True
    granularity: Granularity = "per_tensor"
    observer: Observer = "percentile"
    percentile: float = Field(99.99, gt=50, le=100)
    scale: Literal["static", "learned"] = "learned"
    narrow_range: bool = False
    complex: Literal["cartesian", "polar"] = "cartesian"
    scale_dtype: ScaleDtype = "float32"  # how the scales are stored (and rounded, STE in QAT)
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self):
        _check_spec(self)
        if self.bits is None and self.levels is None:
            self.bits = 8
        return self


class _Sites(Section):
    roles: list[str] = Field(min_length=1)
    modules: str | None = None

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, v: list[str]) -> list[str]:
        for role in v:
            if role not in ALL_ROLES:
                raise ValueError(f"unknown role {role!r}; roles are: {', '.join(ALL_ROLES)}")
        return v

    @field_validator("modules")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v.removeprefix("re:"))
            except re.error as err:
                raise ValueError(f"bad module pattern {v!r}: {err}") from None
        return v


# QuantSpec's fields, each optional with default None (keep the earlier value) and the same
# constraints (f.metadata; Field() because Annotated needs an annotation and it may be empty)
QuantTarget = pydantic.create_model(
    "QuantTarget",
    __base__=_Sites,
    __doc__="Overrides for the sites of ``roles`` (optionally only in modules matching "
    "``modules``);\na field left out (null) keeps the value from ``default`` and earlier targets.",
    __validators__={"_consistent": model_validator(mode="after")(_check_spec)},
    **{
        name: (Annotated[(f.annotation | None, Field(), *f.metadata)], None)
        for name, f in QuantSpec.model_fields.items()
    },
)


class QuantConfig(Section):
    parameterization: Literal["continuous", "discrete_cartesian", "discrete_polar"] = "continuous"
    # S4D: fold B̄ into C at quantization (C ← C·B̄; the state then holds x / B̄ and adds the
    # input unweighted), so no B̄ is stored; the same outputs in float
    fold_b: bool = False
    default: QuantSpec = Field(default_factory=QuantSpec)
    targets: list[QuantTarget] = Field(default_factory=list)


class EvalConfig(Section):
    batch_size: int = Field(256, ge=1)


class ParetoGroup(Section):
    """Roles that move together in the Pareto sweep, and the bit-widths they take."""

    roles: list[str] = Field(min_length=1)
    bits: list[Bits] = Field(min_length=1)

    _known = field_validator("roles")(QuantTarget._known_roles.__func__)


class SweepConfig(Section):
    """Bit-accuracy tables (``qssm sweep``): (a) each role alone at each of ``bits`` with every
    other site at ``base_bits``; (b) every site at each of ``uniform_bits``; (c) every
    combination of the ``pareto`` groups' bits.  Each point runs the ``stages`` for each seed."""

    roles: list[str] = Field(default_factory=list)
    bits: list[Bits] = Field(default_factory=lambda: [2, 3, 4, 6, 8])
    base_bits: Bits = 8
    uniform_bits: list[Bits] = Field(default_factory=list)
    pareto: list[ParetoGroup] = Field(default_factory=list)
    stages: list[Literal["ptq", "qat"]] = Field(default_factory=lambda: ["ptq"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    tolerance: float = Field(0.02, ge=0, le=1)  # accuracy tolerance of `--check` against a golden

    _known = field_validator("roles")(QuantTarget._known_roles.__func__)


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    float: FloatConfig = Field(default_factory=FloatConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    quant: QuantConfig | None = None
    ptq: PTQConfig = Field(default_factory=PTQConfig)
    qat: QATConfig = Field(default_factory=QATConfig)
    sweep: SweepConfig | None = None

    def model_dict(self) -> dict:
        return self.model.model_dump()


def _unwrap(cls: Any) -> Any:
    """The type under ``Annotated[…]`` and ``… | None``."""
    if get_origin(cls) is Annotated:
        cls = get_args(cls)[0]
    if get_origin(cls) in (Union, UnionType):
        args = [c for c in get_args(cls) if c is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return cls


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names valid at the parent of ``loc`` (for 'unknown key' messages)."""
    cls: Any = Recipe
    for part in loc[:-1]:
        cls = _unwrap(cls)
        if get_origin(cls) is list:  # the loc names the item's index
            cls = get_args(cls)[0]
            continue
        if get_origin(cls) in (Union, UnionType):  # discriminated union: the loc names the tag
            cls = next(
                c for c in get_args(cls) if part in get_args(c.model_fields["family"].annotation)
            )
            continue
        if isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            cls = cls.model_fields[part].annotation
        else:
            return []
    cls = _unwrap(cls)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    path = ".".join(str(p) for p in e["loc"]) or "<top>"
    if e["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(e["loc"]))
        msg = f"unknown key {e['loc'][-1]!r}; allowed keys here: {allowed}"
    else:
        msg = f"{e['msg']}, got {e['input']!r}" if "input" in e else e["msg"]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {path}: {msg}{more}"


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe must be a YAML mapping of sections, got {type(data).__name__}"
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_one_line(err, source)) from None


def recipes_dir() -> Path:
    """The shipped recipes: ``qssm/recipes`` in an installed qssm (the checkout's ``recipes/``
    folder, shipped as package data), else the checkout's ``recipes/`` (run from the source tree
    or an editable install)."""
    here = Path(__file__).resolve().parent
    installed = here / "recipes"
    return installed if installed.is_dir() else here.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Name (the path under the recipes folder, without ``.yaml``: ``hetero_4_8``,
    ``sweeps/sdigits_s4d``) → file, for every shipped recipe."""
    root = recipes_dir()
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def recipe_path(name: str | Path) -> Path:
    """A recipe file given as a path, or by the name of a shipped one (``hetero_4_8``; also
    ``recipes/hetero_4_8.yaml``, the checkout path, from any folder).  A file of that path wins
    over a shipped name."""
    path = Path(name)
    if path.is_file():
        return path
    key = path.as_posix().removeprefix("recipes/").removesuffix(".yaml")
    return shipped_recipes().get(key, path)


def load_recipe(path: str | Path) -> Recipe:
    path = recipe_path(path)
    if not path.is_file():
        raise RecipeError(
            f"{path}: no such recipe file or shipped recipe; `qssm recipes` lists the shipped names"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    return parse_recipe(data, str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
