"""Switched-capacitor in-memory-computing targets: a YAML file per chip, validated by pydantic.

Every physical quantity carries its unit in its name (``_ff`` femtofarad, ``_mv`` millivolt,
``_um2`` square micrometre, ``_fj`` femtojoule, ``_fa`` femtoampere, ``_fc`` femtocoulomb).
Errors name the field, the bad value and what is allowed, like recipe errors.

A target states what a designer knows of the silicon (raw comparator offset, trim DAC, leakage
current at a temperature); the figures the mapping and the simulator use are derived from it
(:func:`residual_offset_mv`, :func:`leak_fraction`), not asserted.
"""

import math
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
    encoding: Literal["binary", "bit_serial", "dac"] = Field(
        "bit_serial",
        description="multi-bit inputs: bit_serial (binary-weighted planes, one cycle each) or "
        "dac (a row DAC drives code·V_swing/2^(B−1) in one cycle)",
    )
    max_bits: int = Field(8, ge=1, le=16, description="widest multi-bit input code")


class Parasitic(Section):
    per_unit: float = Field(0.3, ge=0, description="line parasitic per connected unit, × C_u")
    fixed_ff: float = Field(2.0, ge=0)
    spread_global_pct: float = Field(
        10.0, ge=0, lt=100, description="σ of the parasitic per chip (shared layout), %"
    )
    spread_local_pct: float = Field(
        1.0, ge=0, lt=100, description="σ of the parasitic per column around the chip's, %"
    )


class Comparator(Section):
    adc: Literal["sar", "flash"] = Field(
        "sar", description="gate ADC: sar (one comparator, a binary search) or flash"
    )
    offset_mv: float = Field(5.0, ge=0, description="σ of the raw static offset")
    calibration: Literal["none", "trim", "foreground", "autozero"] = Field(
        "trim", description="how the offset is corrected (see residual_offset_mv)"
    )
    trim_bits: int = Field(4, ge=1, le=12, description="trim DAC over ±3σ of the raw offset")
    calibration_samples: int = Field(
        64, ge=1, description="decisions averaged per offset measurement (foreground)"
    )
    autozero_gain: float = Field(100.0, gt=0, description="loop gain of the auto-zero")
    noise_mv: float = Field(0.5, ge=0, description="σ of the noise per decision")
    kickback_fc: float = Field(0.0, ge=0, description="charge a decision kicks onto its input")
    dac_bits: int = Field(10, ge=1, le=16, description="threshold DAC resolution")


class StateBank(Section):
    units: int = Field(64, ge=2, description="largest number of unit capacitors per state")
    passive: bool = Field(True, description="charge sharing only: no rotation, no gain")


class Leakage(Section):
    current_fa: float = Field(1.0, ge=0, description="off-switch leakage at full swing, at T_ref")
    reference_k: float = Field(300.0, gt=0, description="temperature of current_fa")
    doubling_k: float = Field(10.0, gt=0, description="leakage doubles every this many kelvin")
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
    dac_fj: float = Field(20.0, ge=0, description="per threshold-DAC update (a SAR decision)")
    switch_fj: float = Field(0.2, ge=0, description="per switch toggle (driver)")
    clock_fj: float = Field(1.0, ge=0, description="clock distribution per column per phase")
    reference_uw: float = Field(0.0, ge=0, description="static power of ladders / references")


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
        """The same chip with residual comparator offset σ ``offset_mv`` (raw, uncalibrated)."""
        comp = self.comparator.model_copy(update={"offset_mv": offset_mv, "calibration": "none"})
        return self.model_copy(update={"comparator": comp})

    def with_noise(self, noise_mv: float) -> "Target":
        comp = self.comparator.model_copy(update={"noise_mv": noise_mv})
        return self.model_copy(update={"comparator": comp})


def trim_step_mv(c: Comparator) -> float:
    """The trim DAC's step: 2^trim_bits codes over ±3σ of the raw offset."""
    return 6 * c.offset_mv / 2**c.trim_bits


def residual_offset_mv(c: Comparator) -> float:
    """σ of the comparator offset left after calibration (mV), from the raw σ_o = offset_mv:

    - ``none``: σ_o.
    - ``trim``: a trim DAC of b bits spans ±3σ_o in steps Δ = 6σ_o/2^b; the residual is
      uniform in ±Δ/2, σ = Δ·√(1/12) (4 bits of 5 mV: 0.54 mV; the 0.27 % of comparators beyond
      ±3σ keep the excess, which the simulator draws).
    - ``foreground``: a one-time measurement per comparator through the threshold DAC (n
      decisions averaged, σ_n the noise per decision) subtracted from its DAC codes:
      σ = σ_n/√n (0.5 mV, 64 samples: 0.06 mV); the DAC's own quantization of the corrected
      threshold is the thresholds' (simulated, not part of this σ).
    - ``autozero``: the offset stored on a capacitor in a loop of gain A: σ = σ_o/(1 + A).
    """
    if c.calibration == "none":
        return c.offset_mv
    if c.calibration == "trim":
        return trim_step_mv(c) / math.sqrt(12)
    if c.calibration == "foreground":
        return c.noise_mv / math.sqrt(c.calibration_samples)
    return c.offset_mv / (1 + c.autozero_gain)


def leak_fraction(t: Target, c_ff: float, step_s: float) -> float:
    """Fraction of a stored voltage lost per step: the off switches conduct I(T) =
    I_ref·2^((T − T_ref)/doubling) at full swing, linearly in the voltage (an off-state
    conductance G = I/V_swing), so dV/dt = −G·V/C and the loss per step is I(T)·t/(C·V_swing)."""
    leak = t.leakage
    doublings = (t.process.temperature_k - leak.reference_k) / leak.doubling_k
    return leak.current_fa * 1e-15 * 2**doublings * step_s / (c_ff * 1e-15 * swing(t))


def swing(t: Target) -> float:
    """Largest signal excursion around V_cm (volts)."""
    return min(t.process.vcm_v, t.process.vdd_v - t.process.vcm_v)


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
        target = Target.model_validate(data)
    except ValidationError as err:
        raise TargetError(f"{p}: {_where(err)}") from None
    if target.process.vcm_v >= target.process.vdd_v:
        raise TargetError(
            f"{p}: process.vcm_v: {target.process.vcm_v} V must lie below process.vdd_v "
            f"({target.process.vdd_v} V); set it near vdd_v / 2"
        )
    return target
