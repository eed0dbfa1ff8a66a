"""The compiled streaming step gives the interpreter's codes, step for step."""

import numpy as np
import pytest

from hwmap import intref
from hwmap.compiled import CompiledStream
from hwmap.lower import lower
from qssm.runs import load_data, load_run_model


# every op kind between them
@pytest.mark.parametrize("family", ["s4d", "mingru_hw", "mgrade", "mgrade_hw"])
def test_compiled_stream_equals_interpreter(family, tiny_run, recipe_of):
    graph = lower(load_run_model(tiny_run(family))[0])
    fast = CompiledStream(graph)
    x = load_data(recipe_of(family)).test.x.numpy()[:3]
    for seq in x:
        slow = intref.Stream(graph)
        fast.reset()
        for x_t in seq:
            slow(x_t)
            fast(x_t)
            assert all(np.array_equal(v, slow.state[k]) for k, v in fast.codes().items())
        assert np.array_equal(fast.logits(), slow.logits())
