"""The integer graph's files: a lowered graph round-trips; damaged or older files say to re-export;
the golden model and the hardware side import without torch and qssm."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hwmap import intref
from hwmap.graph import GraphError, MinGRUHw, load_graph, save_graph
from hwmap.lower import lower
from qssm.runs import load_data, load_run_model


def test_lowered_graph_round_trips(tiny_run, recipe_of, tmp_path):
    graph = lower(load_run_model(tiny_run("mingru_hw"))[0])
    save_graph(graph, tmp_path)
    again = load_graph(tmp_path)
    assert again.step == graph.step and again.head == graph.head  # typed ops and terms
    assert again.states == graph.states and again.layers == graph.layers
    assert isinstance(again.layers[0], MinGRUHw) and again.layers[0].gate.shift > 0
    assert again.formats.keys() == graph.formats.keys()
    assert all(np.array_equal(v, again.consts[k]) for k, v in graph.consts.items())
    x = load_data(recipe_of("mingru_hw")).test.x.numpy()[:4]
    assert np.array_equal(intref.run(graph, x)[0], intref.run(again, x)[0])
    doc = json.loads((tmp_path / "graph.json").read_text())
    assert doc["step"][0]["op"] == "quantize" and "consts" not in doc  # readable, no arrays
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_damaged_or_older_graph_files_say_to_export_again(hand_graph, tmp_path):
    save_graph(hand_graph, tmp_path)
    doc = json.loads((tmp_path / "graph.json").read_text())
    (tmp_path / "graph.json").write_text(json.dumps({**doc, "version": 1}))
    with pytest.raises(GraphError, match="qssm export"):
        load_graph(tmp_path)
    save_graph(hand_graph, tmp_path)
    (tmp_path / "graph.npz").write_bytes(b"not a zip")
    with pytest.raises(GraphError, match="qssm export"):
        load_graph(tmp_path)


def test_golden_model_and_hardware_side_import_without_torch_or_qssm():
    modules = "graph, ops, intref, compiled, targets, mapping, simulate, verify, onnx_export"
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['qssm'] = None; "
        f"from hwmap import {modules}"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
