"""Fuzzing the two kinds of files users write: recipes and target files, as YAML trees and as raw
text.  Every input either loads or fails with the one-line error naming the problem — never a
traceback."""

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmap.targets import TargetError, load_target
from qssm.recipe import RecipeError, load_recipe, parse_recipe

RECIPE = {
    "name": "f",
    "seed": 0,
    "data": {"name": "sdigits", "options": {"limit_train": 8}},
    "model": {"family": "mgrade_hw", "d_model": 8, "n_layers": 2, "max_delay": 8},
    "float": {"epochs": 1, "mode": "recurrent", "grad_clip": 1.0},
    "quant": {
        "default": {"bits": 4, "observer": "mse"},
        "targets": [{"roles": ["gru.state"], "enabled": False}, {"roles": ["gru.Wz"], "bits": 2}],
    },
    "qat": {"epochs": 1, "hardware": {"target": "minimalist_like"}},
    "sweep": {"uniform_bits": [4], "pareto": [{"roles": ["gru.Wh"], "bits": [2, 4]}]},
}
TARGET = yaml.safe_load(load_target("minimalist_like").model_dump_json())

LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
TREE = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# derandomized: the same examples on every run (the suite is deterministic); no example database
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def key_paths(tree, prefix=()):
    """Every key path of a nested dict/list, the root excluded."""
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for key, value in items:
        yield (*prefix, key)
        yield from key_paths(value, (*prefix, key))


def mutated(base: dict, path: tuple, value, whole: bool):
    """``base`` with the value at ``path`` replaced (or the whole tree, with ``whole``)."""
    if whole:
        return value
    tree = copy.deepcopy(base)
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


def one_line(err: Exception) -> bool:
    return "\n" not in str(err) and str(err).strip() != ""


def test_the_fuzzed_recipes_are_valid_to_begin_with(tmp_path):
    parse_recipe(RECIPE)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(TARGET))
    load_target(tmp_path / "t.yaml")


@FUZZ
@given(st.sampled_from(list(key_paths(RECIPE))), TREE, st.booleans())
def test_a_mutated_recipe_loads_or_is_one_recipe_error(path, value, whole):
    try:
        parse_recipe(mutated(RECIPE, path, value, whole))
    except RecipeError as err:
        assert one_line(err), str(err)


@FUZZ
@given(st.sampled_from(list(key_paths(TARGET))), TREE, st.booleans())
def test_a_mutated_target_loads_or_is_one_target_error(tmp_path_factory, path, value, whole):
    path_ = tmp_path_factory.mktemp("target") / "t.yaml"
    path_.write_text(yaml.safe_dump(mutated(TARGET, path, value, whole)))
    try:
        load_target(path_)
    except TargetError as err:
        assert one_line(err), str(err)


@FUZZ
@given(st.text(max_size=200), st.sampled_from(["recipe", "target"]))
def test_raw_text_loads_or_is_one_error(tmp_path_factory, text, kind):
    path = tmp_path_factory.mktemp(kind) / f"{kind}.yaml"
    path.write_text(text)
    try:
        load_recipe(path) if kind == "recipe" else load_target(path)
    except (RecipeError, TargetError) as err:
        assert one_line(err), str(err)
