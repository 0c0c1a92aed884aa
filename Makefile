# lsdseg: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: pin the local CPU build of torch. GPU users: `make install CONSTRAINTS=` after
# installing a CUDA torch into the venv (see README).
CONSTRAINTS ?= -c constraints/cpu.txt
DEMO_CLIP ?= assets/demo/cvc_seq5.mp4

.PHONY: install install-dev demo test lint bench bench-check bench-baseline clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e ".[dev]"

demo: install
	$(BIN)/lsdseg segment $(DEMO_CLIP) --hypotheses 8 --overlay uncertainty

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install-dev lint
	$(BIN)/python -m pytest -q

# Speed: the pytest-benchmark suites; bench-check fails when a median is >25% slower than the
# saved baseline of this machine class; bench-baseline refreshes that baseline on purpose.
bench: install-dev
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

bench-check: install-dev
	$(BIN)/python benchmarks/check.py

bench-baseline: install-dev
	$(BIN)/python benchmarks/check.py --update

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .benchmarks
