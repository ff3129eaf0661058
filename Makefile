# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline MNIST test split beside the repository (CI has it there too).
MNIST_SHARED := $(abspath ../shared/data/MNIST)
ifneq ($(wildcard $(MNIST_SHARED)/raw),)
export GVA_MNIST_DIR ?= $(MNIST_SHARED)
endif

.PHONY: setup system-deps demo test test-all fuzz stress bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py graphviz_autograd/record/_reduce.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Graphviz's `dot` and Chromium (browser tests) from Debian when we are root and
# they are missing. Without root, rendering falls back to the graphviz-pure wheel
# and the browser tests skip, saying why.
system-deps:
	@bash scripts/system-deps.sh

demo: setup system-deps
	$(VENV)/bin/graphviz-autograd demo

test: setup system-deps
	$(PY) -m pytest -q

fuzz: setup
	GVA_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/test_fuzz.py

stress: setup
	GVA_STRESS=1 $(PY) -m pytest -q -m stress

bench: setup system-deps
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	cd benchmarks && ../$(PY) run_all.py

clean:
	rm -rf $(VENV) out runs .pytest_cache
