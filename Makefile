# Two entry points, both self-contained on a fresh machine:
#   make demo   - builds the venv, then runs the whole pipeline on a synthetic demo corpus
#   make test   - builds the venv, then runs the test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= demo

.PHONY: venv test test-fast demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first where there is no GPU, so the range in pyproject.toml installs nothing more.
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q torch==2.13.0 || echo "CPU torch 2.13.0 not available; pip resolves torch from pyproject"; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q -ra

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

demo: venv
	bash pipelines/demo.sh $(DEMO)

bench: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
