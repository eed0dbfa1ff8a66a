"""Switched-capacitor in-memory-computing targets: a YAML file per chip, validated by pydantic.

Every physical quantity carries its unit in its name (``_ff`` femtofarad, ``_mv`` millivolt,
``_um2`` square micrometre, ``_fj`` femtojoule).  Errors name the field, the bad value and what
is allowed, like recipe errors.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TARGETS = Path(__file__).resolve().parent / "targets"


class TargetError(ValueError):
    """A target file that cannot be used; the message names the field and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Process(Section):
    vdd_v: float = Field(0.9, gt=0)
    vcm_v: float = Field(0.45, gt=0)
    temperature_k: float = Field(300.0, gt=0)


class Capacitor(Section):
    unit_ff: float = Field(1.0, gt=0, description="unit capacitor C_u")
    area_um2_per_ff: float = Field(0.5, gt=0, description="MOM capacitor density⁻¹")
    mismatch_pct_sqrt_ff: float = Field(
        0.66, ge=0, description="σ(ΔC/C) of one unit = this / √(C_u / fF), in %"
    )


class Array(Section):
    rows: int = Field(128, ge=1, description="fan-in per column (inputs)")
    cols: int = Field(128, ge=1, description="outputs per array")
    tiling: bool = Field(True, description="split a larger fan-in over several arrays")


class Weights(Section):
    style: Literal["unit", "binary"] = Field(
        "unit", description="unit: thermometer units per level; binary: binary-weighted"
    )
    max_units: int = Field(
        3, ge=1, description="largest |weight code| one cell holds on one side (differential)"
    )


class Inputs(Section):
    encoding: Literal["binary", "bit_serial"] = "bit_serial"
    max_bits: int = Field(8, ge=1, le=16, description="widest input code applied bit-serially")


class Parasitic(Section):
    per_unit: float = Field(0.3, ge=0, description="line parasitic per connected unit, × C_u")
    fixed_ff: float = Field(2.0, ge=0)


class Comparator(Section):
    offset_mv: float = Field(5.0, ge=0, description="σ of the static offset before trim")
    trim_bits: int = Field(4, ge=0, le=12)
    trimmed_offset_mv: float = Field(1.0, ge=0, description="σ of the offset after trim")
    noise_mv: float = Field(0.5, ge=0, description="σ of the noise per decision")
    dac_bits: int = Field(10, ge=1, le=16, description="threshold DAC resolution")


class StateBank(Section):
    units: int = Field(64, ge=2, description="largest number of unit capacitors per state")
    passive: bool = Field(True, description="charge sharing only: no rotation, no gain")


class Leakage(Section):
    droop_per_step: float = Field(1e-4, ge=0, lt=1, description="fraction of state lost")
    charge_injection_mv: float = Field(0.2, ge=0, description="offset per sampling event")


class DelayLine(Section):
    """mGRADE's delay lines: a digital ring buffer per layer (one write of the new input and one
    read per tap each step) and the tap convolution as digital multiply-adds."""

    max_depth: int = Field(64, ge=1, description="longest delay (steps) a line holds")
    max_bits: int = Field(65536, ge=1, description="storage of all lines together")
    area_um2_per_bit: float = Field(0.25, gt=0, description="bit cell with its periphery")
    access_fj_per_bit: float = Field(2.0, ge=0, description="one bit written or read")
    tap_fj: float = Field(20.0, ge=0, description="one digital tap multiply-add")


class Timing(Section):
    clock_mhz: float = Field(50.0, gt=0)
    phases_per_step: int = Field(4, ge=1)


class Energy(Section):
    comparator_fj: float = Field(10.0, ge=0, description="per decision")
    dac_fj: float = Field(20.0, ge=0, description="per threshold update")
    switch_fj: float = Field(0.2, ge=0, description="per switch toggle (driver)")


class Target(Section):
    name: str
    description: str = ""
    process: Process = Field(default_factory=Process)
    capacitor: Capacitor = Field(default_factory=Capacitor)
    array: Array = Field(default_factory=Array)
    weights: Weights = Field(default_factory=Weights)
    inputs: Inputs = Field(default_factory=Inputs)
    parasitic: Parasitic = Field(default_factory=Parasitic)
    comparator: Comparator = Field(default_factory=Comparator)
    state_bank: StateBank = Field(default_factory=StateBank)
    leakage: Leakage = Field(default_factory=Leakage)
    delay_line: DelayLine = Field(default_factory=DelayLine)
    timing: Timing = Field(default_factory=Timing)
    energy: Energy = Field(default_factory=Energy)

    def with_unit(self, unit_ff: float) -> "Target":
        """The same chip with another unit capacitance (for the Monte-Carlo sweep)."""
        cap = self.capacitor.model_copy(update={"unit_ff": unit_ff})
        return self.model_copy(update={"capacitor": cap})

    def with_offset(self, offset_mv: float) -> "Target":
        comp = self.comparator.model_copy(update={"trimmed_offset_mv": offset_mv})
        return self.model_copy(update={"comparator": comp})


def _where(err: ValidationError) -> str:
    e = err.errors()[0]
    path = ".".join(str(p) for p in e["loc"])
    return f"{path}: {e['msg']} (got {e.get('input')!r})"


def load_target(path: str | Path) -> Target:
    """A target by file path or by the name of a shipped one (``hwmap/targets/<name>.yaml``)."""
    p = Path(path)
    if not p.exists() and (TARGETS / f"{p.stem}.yaml").exists() and p.parent == Path("."):
        p = TARGETS / f"{p.stem}.yaml"
    if not p.exists():
        shipped = ", ".join(sorted(t.stem for t in TARGETS.glob("*.yaml")))
        raise TargetError(f"{path}: no such target file; shipped targets: {shipped}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise TargetError(f"{p}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise TargetError(f"{p}: a target is a mapping of sections (process, capacitor, …)")
    try:
        return Target.model_validate(data)
    except ValidationError as err:
        raise TargetError(f"{p}: {_where(err)}") from None
