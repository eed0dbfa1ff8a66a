"""The integer reference: hand-computed requantization, streaming = whole sequences."""

import numpy as np

from hwmap import intref
from hwmap.lower import lower
from qssm.runs import load_data, load_run_model


def test_hand_computed_requantization(hand_graph):
    x = np.array([[1.3, -0.7, 0.25]], dtype=np.float32)
    env, _ = intref.step(hand_graph, x, {})
    # codes: rint(2.6, -1.4, 0.5) = 3, -1, 0 (half to even, as QuantizeLinear)
    assert env["c"].tolist() == [[3, -1, 0]]
    # 3·3/4 = 2.25 → 2;  −3/4 → −1 (half up: floor(−0.75 + 0.5));  0 → 0
    assert env["y"].tolist() == [[2, -1, 0]]
    big = np.array([[100.0, -100.0, 0.0]], dtype=np.float32)
    assert intref.step(hand_graph, big, {})[0]["y"].tolist() == [[5, -6, 0]]  # 7·3/4, −8·3/4


def test_streaming_equals_whole_sequences(tiny_run, recipe_of):
    graph = lower(load_run_model(tiny_run("mgrade"))[0])
    x = load_data(recipe_of("mgrade")).test.x.numpy()[:3]
    logits, _ = intref.run(graph, x)
    for i in range(3):
        stream = intref.Stream(graph)
        for t in range(x.shape[1]):
            stream(x[i, t])
        assert np.array_equal(stream.logits(), logits[i])
    stream.reset()
    assert all(not v.any() for v in stream.state.values())
