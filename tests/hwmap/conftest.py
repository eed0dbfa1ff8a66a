"""Tiny quantized runs (sdigits, 64 steps) of every family, made once per test session."""

import numpy as np
import pytest

from hwmap.graph import Graph
from hwmap.ops import Affine, Quantize, Real, Term
from qssm.runs import load_data, open_run, quantize_run

MODELS = {
    "s4d": {"family": "s4d", "d_model": 8, "d_state": 8, "dt_min": 0.01, "dt_max": 0.5},
    "s4d_real": {"family": "s4d_real", "d_model": 8, "d_state": 8, "dt_min": 0.01, "dt_max": 0.5},
    "mingru_hw": {"family": "mingru_hw", "d_model": 8, "n_layers": 2},
    "mingru": {"family": "mingru", "d_model": 8},
    "mgrade": {"family": "mgrade", "d_model": 8, "n_layers": 1, "max_delay": 8, "n_taps": 2},
    "mgrade_hw": {"family": "mgrade_hw", "d_model": 8, "n_layers": 2, "max_delay": 8, "n_taps": 2},
    "s4d_real_hw": {
        "family": "s4d_real",
        "d_model": 8,
        "d_state": 8,
        "dt_min": 0.01,
        "dt_max": 0.5,
    },
}
QUANT = {  # the shipped recipes' styles: polar + per-channel, cartesian, analog state, 8 bit
    "s4d": {
        "default": {"bits": 4, "granularity": "per_channel", "complex": "polar"},
        "targets": [
            {"roles": ["ssm.A", "ssm.state"], "bits": 8},
            {"roles": ["act.input", "act.output", "ssm.output"], "granularity": "per_tensor"},
        ],
    },
    "s4d_real": {"parameterization": "discrete_cartesian", "default": {"bits": 6}},
    "mingru_hw": {
        "default": {"bits": 2, "observer": "mse"},
        "targets": [
            {"roles": ["gru.bz", "gru.bh", "gru.gate"], "bits": 6},
            {"roles": ["gru.state", "gru.cand"], "enabled": False},
            {"roles": ["act.input", "act.output"], "bits": 8},
        ],
    },
    "mingru": {"default": {"bits": 8}},
    "s4d_real_hw": {  # recipes/s4d_real_hw.yaml: retention grid, analog state
        "default": {"bits": 8, "granularity": "per_channel", "complex": "polar"},
        "targets": [
            {"roles": ["ssm.state"], "enabled": False},
            {"roles": ["act.input", "act.output", "ssm.output"], "granularity": "per_tensor"},
        ],
    },
    "mgrade_hw": {  # recipes/mgrade_hw.yaml: MINIMALIST minGRU behind an integer delay line
        "default": {"bits": 2, "observer": "mse"},
        "targets": [
            {"roles": ["gru.bz", "gru.bh", "gru.gate"], "bits": 6},
            {"roles": ["gru.state", "gru.cand"], "enabled": False},
            {"roles": ["conv.weight"], "bits": 4},
            {"roles": ["act.input", "act.output"], "bits": 8},
        ],
    },
    "mgrade": {
        "default": {"bits": 8, "granularity": "per_channel"},
        "targets": [{"roles": ["act.input", "act.output"], "granularity": "per_tensor"}],
    },
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, recipe_of):
    """family → a finished quantized run dir (made on first use)."""
    made = {}

    def make(family: str):
        if family not in made:
            r = recipe_of(family)
            out = open_run(tmp_path_factory.mktemp(family) / "run", r, force=False)
            quantize_run(r, load_data(r), out, progress=False)
            made[family] = out
        return made[family]

    return make


@pytest.fixture(scope="session")
def recipe_of(tiny_recipe):
    """family → its tiny recipe (optionally with another quant section)."""
    return lambda family, quant=None: tiny_recipe(family, MODELS[family], quant or QUANT[family])


@pytest.fixture
def hand_graph() -> Graph:
    """x → codes at scale 0.5 (4 bits) → requantized by 3/4 (M = 3, shift 2) → logits."""
    step = [
        Quantize(out="c", src="x", scale="s", zp=0, lo=-8, hi=7),
        Affine(out="y", terms=(Term("mul", ("c",), "M"),), shift=2, lo=-8, hi=7, site="y"),
    ]
    head = [Real(out="logits", terms=(Term("mul", ("y",), "one"),))]
    consts = {"s": np.float32(0.5), "M": np.int64(3), "one": np.float64(1.0)}
    return Graph("hand", 3, 3, "y", [], step, head, consts, {})
