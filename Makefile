# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/qssm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: install demo test test-all lint
install: $(BIN)/qssm

demo: install  ## the main job on the embedded default data
	$(BIN)/qssm train --recipe recipes/fp32_s4d_smnist5k.yaml

test: install  ## lint + the default test suite (slow tests excluded)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''
