from pathlib import Path

import pytest

from qssm.recipe import RecipeError, dump_recipe, load_recipe, parse_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
BASE = {"name": "t", "model": {"family": "s4d"}}


def test_all_shipped_recipes_validate():
    paths = sorted(RECIPES.rglob("*.yaml"))
    assert paths
    for p in paths:
        load_recipe(p)


def test_defaults_are_resolved_and_roundtrip():
    r = parse_recipe(BASE)
    assert r.model.d_state == 64 and r.data.name == "smnist5k" and r.float.schedule == "cosine"
    import yaml

    assert parse_recipe(yaml.safe_load(dump_recipe(r))) == r


@pytest.mark.parametrize(
    "recipe, expected",
    [
        ({**BASE, "bogus": 1}, r"bogus: unknown key 'bogus'; allowed keys here: name, seed, data"),
        (
            {**BASE, "data": {"nme": "x"}},
            r"data.nme: unknown key 'nme'; allowed keys here: name, root",
        ),
        (
            {**BASE, "model": {"family": "s4d", "d_stat": 3}},
            r"model.s4d.d_stat: unknown key .*d_state",
        ),
        (
            {**BASE, "float": {"lr": "fast"}},
            r"float.lr: Input should be a valid number, got 'fast'",
        ),
        (
            {**BASE, "float": {"epochs": "3"}},
            r"float.epochs: Input should be a valid integer, got '3'",
        ),
        ({**BASE, "model": {"family": "lstm"}}, r"model: .*'lstm'.*'s4d'"),
        (
            {**BASE, "model": {"family": "s4d", "init": "x"}},
            r"model.s4d.init: Input should be 'lin' or 'inv'",
        ),
        (
            {**BASE, "data": {"name": "cifar"}},
            r"data.name: .*unknown dataset 'cifar'; choose one of .*smnist5k",
        ),
        ({"model": {"family": "s4d"}}, r"name: Field required"),
        (  # under an optional section and inside a list item
            {**BASE, "quant": {"default": {"bitz": 4}}},
            r"quant.default.bitz: unknown key 'bitz'; allowed keys here: bits, levels",
        ),
        (
            {**BASE, "quant": {"targets": [{"roles": ["ssm.A"], "bitz": 4}]}},
            r"quant.targets.0.bitz: unknown key 'bitz'; allowed keys here: roles, modules, bits",
        ),
    ],
)
def test_errors_name_the_key_path(recipe, expected):
    with pytest.raises(RecipeError, match=expected) as info:
        parse_recipe(recipe, "r.yaml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("r.yaml: ")


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(bad)
