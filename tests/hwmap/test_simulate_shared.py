"""The simulator's fast paths against the plain execution of the integer graph: the input side
computed once for all chips, the delay lines as rings with a tap-sum kernel, the gate ADC's
branchless count — each bit for bit what the graph's ops (or a brute-force count) give."""

import numpy as np
import pytest

from hwmap import simulate
from hwmap.intref import Numpy
from hwmap.lower import lower
from hwmap.mapping import map_graph
from hwmap.ops import Affine, Shift, Term
from hwmap.targets import load_target
from qssm.runs import load_data, load_run_model


def plain(sim: simulate.Simulator) -> simulate.Simulator:
    """The same simulator with every op evaluated per chip as the graph has it (nothing
    shared but the input x, the graph's own Shift and tap sum)."""
    sim.same, sim.lines, sim.rings, sim.parts = {"x"}, {}, {}, sim.analog
    return sim


@pytest.mark.parametrize("family, adc", [("mingru_hw", "sar"), ("mgrade_hw", "flash")])
def test_shared_input_side_and_rings_are_the_graph_per_chip(tiny_run, recipe_of, family, adc):
    graph = lower(load_run_model(tiny_run(family))[0])
    t = load_target("minimalist_like")
    t = t.model_copy(update={"comparator": t.comparator.model_copy(update={"adc": adc})})
    mapping = map_graph(graph, t)
    x = load_data(recipe_of(family)).test.x.numpy()[:6]
    x = np.concatenate([x] * 5)  # repeated sequences: few distinct input rows (a table)
    runs = []
    for fast in (True, False):
        sim = simulate.Simulator(graph, mapping, t, simulate.NONIDEALITIES, [0, 1, 2])
        runs.append(sim.run(x, trace=True) if fast else plain(sim).run(x, trace=True))
        if fast:
            assert graph.layers[0].gate.x in sim.same  # the first layer's input is shared
            assert any(v is not None for v in sim.tables.values()) or family == "mgrade_hw"
            if family == "mgrade_hw":  # the first delay line shared, the second a ring
                assert graph.layers[0].line.out in sim.same
                assert graph.layers[1].line.out in sim.lines
    (a, trace_a), (b, trace_b) = runs
    assert np.array_equal(a, b)
    assert trace_a.keys() == trace_b.keys()
    assert all(np.array_equal(trace_a[k], trace_b[k]) for k in trace_a)


def test_ring_and_tap_kernel_are_the_shift_and_tap_sum_ops():
    rng = np.random.default_rng(3)
    rows, H, J = 7, 5, 9
    K = rng.integers(-8, 8, (H, J)) * (rng.random((H, J)) < 0.4)  # sparse taps
    M = rng.integers(1, 2**20, H)
    shift = Shift(out="buf'", src="x", buffer="buf")
    taps = Affine(out="y", terms=(Term("dot", ("buf'", "K"), "M"),), shift=12, lo=-128, hi=127)
    consts = {"K": K, "M": M}
    buffer, ring = np.zeros((rows, H, J), dtype=np.int64), None
    for step in range(2 * J + 3):
        x = rng.integers(-128, 128, (rows, H))
        buffer = shift.eval(Numpy({"x": x, "buf": buffer}, consts))
        if ring is None:  # from a graph buffer once, then pushed
            ring = simulate.Ring.of(buffer, np.int8)
        else:
            ring.push(x)
        assert np.array_equal(ring.buffer(), buffer)
        want = taps.eval(Numpy({"buf'": buffer}, consts))
        Kt = np.ascontiguousarray(K.T)
        got = simulate._kernels()["taps"](
            ring.codes, ring.pos, Kt, np.flatnonzero(Kt.any(1)), M, 2**11, 12, -128, 127
        )
        assert np.array_equal(got, want), step


@pytest.mark.parametrize("top", [1, 5, 63, 64, 100])
def test_gate_count_is_the_number_of_thresholds_below_the_line(top):
    """The branchless binary search over padded thresholds (one level beyond the unrolled
    ones from 64 on), with repeated thresholds and a flash's kick, against brute force."""
    rng = np.random.default_rng(top)
    chips, batch, cols = 2, 40, 6
    theta = np.sort(np.round(rng.normal(0, 1, (chips, cols, top)), 1), -1)  # ties on purpose
    units = rng.normal(0, 1.5, (chips, batch, cols))
    none3, none2 = np.zeros((0, 0, 0)), np.zeros((0, 0))
    kick = rng.normal(0, 0.05, top + 1)
    count = lambda v: (theta[:, None] <= v[..., None]).sum(-1)  # noqa: E731
    for k in (np.zeros(0), kick):
        got = simulate._kernels()["gate"](
            units, 1.0, none2, 0.0, none3, 0.0, 0.0, 0.0, none3, simulate.padded(theta), k, 3
        )
        want = count(units)
        if k.size:
            want = count(units + k[want])
        assert np.array_equal(got, 3 + want)


def test_distinct_rows_index_every_row():
    rng = np.random.default_rng(1)
    rows = rng.integers(-3, 3, (500, 4))  # many repeats
    distinct, index = simulate.distinct_rows(rows)
    assert np.array_equal(distinct[index], rows)
    assert len(distinct) == len(np.unique(rows, axis=0))
