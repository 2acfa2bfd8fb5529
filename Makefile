# Bootstraps a virtualenv in .venv from nothing but python3 and pip.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
DEMO   := $(VENV)/.installed-demo

.PHONY: demo test lint fuzz soak bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP) $(DEMO)

# The demo needs the library and rich, nothing else: no dev tools, no peer libraries.
$(DEMO): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO)

demo: $(DEMO)             ## the live demo on the example policies (in-memory state)
	$(VENV)/bin/policyengine demo

test: $(STAMP)            ## the whole test suite
	$(PY) -m pytest -q

lint: $(STAMP)            ## ruff, mypy --strict, and the checked-in JSON Schema
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff check --select C901 --config 'lint.mccabe.max-complexity=15' policyengine
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict policyengine
	$(VENV)/bin/policyengine schema --check

fuzz: $(STAMP)            ## long fuzzing and model-checking runs
	$(PY) -m pytest -q -m fuzz -p no:cacheprovider

soak: $(STAMP)            ## 1,000-reload soak under load
	$(PY) -m pytest -q -m soak

bench: $(STAMP)           ## every benchmark, one after the other (ratios matter, not absolutes)
	$(PY) bench/bench_guard.py
	$(PY) bench/bench_exporters.py
	$(PY) bench/bench_load.py
	$(PY) bench/bench_reload.py
	$(PY) bench/bench_redis.py
	$(PY) bench/bench_cascade.py
	$(PY) bench/bench_hedge.py
	$(PY) bench/bench_adaptive.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
