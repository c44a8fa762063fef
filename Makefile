# imsim-lab: the two commands of the README, and the set-up they share.
.DEFAULT_GOAL := help
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup test test-gpu demo bench clean

help:
	@echo "make demo   - the main job: set up, build the demo benchmark, run, show results"
	@echo "make test   - set up, then run every test that can run on this machine (no GPU needed)"
	@echo "make setup  - create .venv (Python 3.12) and install the project (idempotent)"
	@echo "make bench  - print the performance figures of the README (evaluation, extraction, search, attacks)"

$(STAMP): pyproject.toml requirements/constraints.txt scripts/setup.sh
	scripts/setup.sh

setup: $(STAMP)

test: setup
	$(PYTHON) -m pytest -m "not gpu" -n 2 $(PYTEST_ARGS)

test-gpu: setup
	$(PYTHON) -m pytest -m gpu $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/imsim-lab demo

bench: setup
	$(PYTHON) benchmarks/bench_eval.py
	$(PYTHON) benchmarks/bench_extract.py --n 192 --workers 1
	$(PYTHON) benchmarks/bench_search.py
	$(PYTHON) benchmarks/bench_attacks.py

clean:
	rm -rf $(VENV) .pytest_cache
