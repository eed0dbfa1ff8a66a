# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/qssm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -c constraints.txt --no-deps neurobench snntorch  # metrics only (pyproject.toml)
	touch $@

.PHONY: install demo test test-all bench docs
install: $(BIN)/qssm

demo: install  ## the main job on the embedded default data: float, PTQ, QAT, report
	$(BIN)/qssm quantize --recipe recipes/hetero_4_8.yaml --force

test: install  ## lint, the layer contracts (pyproject.toml), the default test suite (no slow tests)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

bench: install  ## speed and memory figures (bench/run.py), one process at a time
	$(BIN)/python bench/run.py

docs:  ## render the measured figures in README.md and docs/ from bench/results/ (bench/render_docs.py)
	$(PY) bench/render_docs.py
