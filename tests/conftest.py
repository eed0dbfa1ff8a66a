"""Fixtures shared across the test packages."""

import pytest

from qssm.recipe import parse_recipe


def sdigits_recipe(family: str, model: dict, quant: dict, **qat):
    """A tiny recipe: sdigits (128 train / 64 test), one float epoch, PTQ on two batches, one
    QAT epoch (``qat``: further settings of the QAT section)."""
    return parse_recipe(
        {
            "name": f"tiny_{family}",
            "seed": 0,
            "data": {"name": "sdigits", "options": {"limit_train": 128, "limit_test": 64}},
            "model": model,
            "float": {"epochs": 1, "batch_size": 32},
            "quant": quant,
            "ptq": {"calibration_batches": 2, "batch_size": 32},
            "qat": {"epochs": 1, "batch_size": 32, **qat},
            "eval": {"batch_size": 32},
        }
    )


@pytest.fixture(scope="session")
def tiny_recipe():
    """(family, model section, quant section) → a tiny sdigits recipe."""
    return sdigits_recipe
