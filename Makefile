# lsdseg: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: pin the local CPU build of torch. GPU users: `make install CONSTRAINTS=` after
# installing a CUDA torch into the venv (see README).
CONSTRAINTS ?= -c constraints/cpu.txt
DEMO_CLIP ?= assets/demo/cvc_seq5.mp4
# pip stays quiet: no progress, no version check. Its one remaining message, setuptools'
# "Editable installation ... be careful with folders in your working directory", is information
# only (every editable install with a package-dir mapping gets it) and is filtered by its text;
# any other warning still shows.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip --quiet --disable-pip-version-check

.PHONY: install install-dev install-serve demo test test-serve lint bench bench-check bench-baseline \
	bench-peer clean

# the recipes of install, install-dev and demo are not echoed: `make demo` prints lsdseg's lines
$(BIN)/python:
	@echo "lsdseg: creating $(VENV) and installing (the first time only, a few minutes)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip

# [onnx]: the ONNX export and the onnx backend, the faster one on a CPU
install: $(BIN)/python
	@$(PIP) install $(CONSTRAINTS) -e ".[onnx]"

install-dev: $(BIN)/python
	@$(PIP) install $(CONSTRAINTS) -e ".[dev]"

demo: install
	@$(BIN)/lsdseg segment $(DEMO_CLIP) --hypotheses 8 --overlay uncertainty

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install-dev lint
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-serve

# Serving: PyTriton (`lsdseg serve`, Triton Inference Server) needs numpy<2 while the main venv has
# numpy 2, so it gets its own venv; constraints/serve.txt keeps numpy 1.x and OpenCV 4.x there.
# test-serve starts real servers on loopback (the main venv skips those tests).
SERVE_VENV ?= .venv-serve
SERVE_BIN := $(SERVE_VENV)/bin
SERVE_TESTS ?= tests/test_serve*.py

$(SERVE_BIN)/python:
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_BIN)/pip install --quiet --upgrade pip

install-serve: $(SERVE_BIN)/python
	PYTHONWARNINGS="ignore:Editable installation" $(SERVE_BIN)/pip install --quiet $(CONSTRAINTS) -c constraints/serve.txt -e ".[serve]" "pytest>=8"

test-serve: install-serve
	$(SERVE_BIN)/python -m pytest -q $(SERVE_TESTS)

# Speed: the pytest-benchmark suites; bench-check fails when a median is >25% slower than the
# saved baseline of this machine class; bench-baseline refreshes that baseline on purpose.
bench: install-dev
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

bench-check: install-dev
	$(BIN)/python benchmarks/check.py

bench-baseline: install-dev
	$(BIN)/python benchmarks/check.py --update

# The pixel-space peer (med-seg-diff-pytorch) needs torchvision, which does not load beside the
# CPU torch 2.13.0: it gets its own venv with torch 2.14.1 (CPU execution still), never .venv.
PEER_VENV ?= .venv-peer
PEER_JSON ?= benchmarks/results/peer-cpu-$(shell nproc)core.json
$(PEER_VENV)/bin/python:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 med-seg-diff-pytorch==0.3.3
	$(PEER_VENV)/bin/pip install --quiet -e . "pytest>=8" "pytest-benchmark>=4"

bench-peer: $(PEER_VENV)/bin/python
	$(PEER_VENV)/bin/python -m pytest benchmarks/bench_peer.py -q --benchmark-only \
		--benchmark-json=$(PEER_JSON)
	$(PEER_VENV)/bin/python benchmarks/peer_report.py $(PEER_JSON)

clean:
	rm -rf $(VENV) $(PEER_VENV) $(SERVE_VENV) build *.egg-info .pytest_cache .ruff_cache .benchmarks
