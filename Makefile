# Two entry points for a fresh clone (see README.md):
#   make quickstart   set up .venv if needed, train the quickstart run, evaluate it on its training
#                     level (eval/train/) and on unseen levels (eval/)
#   make test         set up .venv if needed (with the dev and video extras), run the lint gate
#                     (ruff, rules in pyproject.toml), then every test (what CI runs)
#   make test-fast    set up .venv if needed, run the lint gate, then the tests not marked slow
#                     (docs/architecture.md, Tests): about two minutes on two cores, the edit loop
#   make lint         the lint gate alone
#   make install      set up .venv alone (TORCH=torch: torch from PyPI, a CUDA build on Linux)
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch; on a CUDA machine use TORCH=torch (or install torch yourself first).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: quickstart test test-fast lint install clean-runs

quickstart: $(VENV)/.installed
	$(BIN)/python train.py --config configs/quickstart.yaml
	$(BIN)/python eval.py runs/quickstart --split train --modes member --name train
	$(BIN)/python eval.py runs/quickstart

test: lint
	$(BIN)/python -m pytest -q tests

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(VENV)/.installed
	$(BIN)/ruff check .

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,video]"
	touch $@

clean-runs:
	rm -rf runs/quickstart
