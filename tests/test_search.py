import pytest
import yaml

from qssm.cli import main
from qssm.io import read_json
from qssm.search import allocate


def test_greedy_allocation_hand_case():
    """Two roles of 100 elements; A loses 10 points at 4 bits, B only 1: B is lowered first."""
    elements = {"A": 100, "B": 100}
    drop = {
        ("A", 8): 0.0,
        ("A", 4): 0.10,
        ("A", 2): 0.5,
        ("B", 8): 0.0,
        ("B", 4): 0.01,
        ("B", 2): 0.02,
    }
    bits = [2, 4, 8]
    assert allocate(elements, 50, drop, bits, 50 + 1600) == {"A": 8, "B": 8}
    assert allocate(elements, 50, drop, bits, 50 + 1200) == {"A": 8, "B": 4}
    assert allocate(elements, 50, drop, bits, 50 + 1000) == {"A": 8, "B": 2}
    assert allocate(elements, 50, drop, bits, 50 + 600) == {"A": 4, "B": 2}
    with pytest.raises(ValueError, match="above the budget"):
        allocate(elements, 50, drop, bits, 50 + 300)


def test_search_fits_the_budget_and_reports(tmp_path):
    recipe = {
        "name": "search_tiny",
        "seed": 0,
        "data": {"name": "sdigits", "options": {"limit_train": 512}},
        "model": {"family": "s4d", "d_model": 8, "d_state": 8, "dt_min": 0.01, "dt_max": 0.5},
        "float": {"epochs": 3, "batch_size": 32, "ssm_lr": 0.01},
        "quant": {
            "default": {"granularity": "per_channel", "complex": "polar", "scale_dtype": "float16"}
        },
        "ptq": {"calibration_batches": 2},
        "qat": {"epochs": 1, "batch_size": 32},
        "eval": {"batch_size": 400},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert (
        main(
            [
                "search",
                "--recipe",
                str(path),
                "--budget-reduction",
                "3",
                "--bits",
                "2",
                "4",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = read_json(out / "metrics.json")
    s = m["search"]
    assert m["footprint"]["total_bits"] <= s["budget_bits"]
    assert m["footprint"]["total_bits"] == s["predicted_total_bits"]
    assert set(s["chosen_bits"].values()) <= {2, 4, 8} and "ssm.A" in s["chosen_bits"]
    assert "Bit allocation" in (out / "report.md").read_text()
