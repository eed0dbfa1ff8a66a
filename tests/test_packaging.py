"""The package as pip installs it: every package listed, the recipes shipped as package data and
found by name outside the checkout, the version and the license."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import qssm

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_list_covers_the_source_tree():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("qssm", "hwmap")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert set(config["packages"]) == found | {"qssm.recipes"}
    assert config["package-dir"] == {"qssm.recipes": "recipes"}


def test_a_built_wheel_ships_the_recipes_and_finds_them_by_name(tmp_path):
    src = tmp_path / "src"
    for name in ("qssm", "hwmap", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "dist"), str(src)], check=True, cwd=src)
    (wheel,) = (tmp_path / "dist").glob("qssm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    recipes = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))
    assert {f"qssm/{r}" for r in recipes} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    # the installed layout, from a folder outside the checkout
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    code = (
        "import json, qssm, qssm.recipe as r; "
        "print(json.dumps([qssm.__file__, str(r.recipes_dir()), list(r.shipped_recipes()), "
        "r.load_recipe('hetero_4_8').name]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    module, where, listed, loaded = json.loads(out.stdout)
    assert module.startswith(str(tmp_path / "site")) and where.startswith(str(tmp_path / "site"))
    assert sorted(listed) == [r.removeprefix("recipes/").removesuffix(".yaml") for r in recipes]
    assert loaded == "hetero_4_8"
    version = subprocess.run(
        [sys.executable, "-m", "qssm.cli", "--version"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == f"qssm {qssm.__version__}"


def test_import_sets_a_short_openmp_spin_unless_the_environment_has_one():
    """``import qssm`` gives libgomp (torch's OpenMP, loaded after it) a short spin before its
    idle threads sleep, and keeps a value the environment already has."""
    code = "import os, qssm; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run(env) == "1000"
    assert run({**env, "GOMP_SPINCOUNT": "5"}) == "5"
