# Two entry points, both self-contained on a fresh machine:
#   make demo   - builds the venv, then runs the whole pipeline on a synthetic demo corpus
#   make test   - builds the venv, then runs the test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MALLOC_STAMP := $(VENV)/.malloc-tried
# Runs a command under the fast allocator (tcmalloc, else glibc tunables): pipelines/allocator.py.
FAST_MALLOC := $(PY) -m pipelines.allocator
DEMO ?= demo

.PHONY: venv test test-fast demo bench clean realistic-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first where there is no GPU, so the range in pyproject.toml installs nothing more.
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q torch==2.13.0 || echo "CPU torch 2.13.0 not available; pip resolves torch from pyproject"; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# tcmalloc makes the CPU training step about 2x faster (docs/performance.md, "model step").
# Best effort, tried once: installed with apt-get where we are root and apt exists; elsewhere
# pipelines/allocator.py falls back to glibc tunables and nothing fails.
$(MALLOC_STAMP): $(STAMP)
	@if ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 2>/dev/null | grep -q .; then \
	  echo "tcmalloc: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  ( export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } ) \
	  && echo "tcmalloc: installed libtcmalloc-minimal4" \
	  || echo "tcmalloc: not installed (apt-get failed); glibc tunables will be used"; \
	else \
	  echo "tcmalloc: not installed (needs root and apt-get); glibc tunables will be used"; \
	fi
	@touch $(MALLOC_STAMP)

venv: $(STAMP) $(MALLOC_STAMP)

test: venv
	$(FAST_MALLOC) $(PY) -m pytest -q -ra

test-fast: venv
	$(FAST_MALLOC) $(PY) -m pytest -q -m "not slow"

demo: venv
	$(FAST_MALLOC) bash pipelines/demo.sh $(DEMO)

bench: venv
	for b in benchmarks/bench_*.py; do $(FAST_MALLOC) $(PY) $$b || exit 1; done

# The Debian packages vr_data/testing/realistic.py builds the realistic check corpus from
# (benchmarks/bench_quality.py --corpus realistic; issue 24). Needs root and apt-get. Never
# drascula-music, hyperrogue-music or asc-music: they are reserved for an independent evaluation.
REALISTIC_PACKAGES := festival festvox-kallpc16k festvox-kdlpc16k espeak-ng singularity-music planetblupi-music-ogg
realistic-deps:
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $(REALISTIC_PACKAGES) || \
	{ apt-get update -q && apt-get install -y -q --no-install-recommends $(REALISTIC_PACKAGES); }

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
