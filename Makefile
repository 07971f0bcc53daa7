# Every target creates .venv and installs what it needs by itself.
# torch==2.13.0 is installed first when no torch is present: it is the local CPU build;
# an unpinned torch would pull a multi-GB CUDA build.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUNS  ?= runs
JOBS  ?= 2

.PHONY: demo test lint bench figures clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Trains vanilla, BN and PER on the embedded digits, prints the table, then draws the comparison figures.
demo: $(STAMP)
	$(PY) -m per_core.demo --out $(RUNS)/demo
	$(PY) -m analysis.plot $(RUNS)/demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# pytest exits 5 when it collects no test: that is a failure here, never masked.
test: $(STAMP) lint
	$(PY) -m pytest -n $(JOBS) -q

bench: $(STAMP)
	$(PY) -m bench

# Regenerates figures/ (what the README shows) deterministically; trains the demo sweep if it is missing.
figures: $(STAMP)
	test -f $(RUNS)/demo/per/metrics.jsonl || $(PY) -m per_core.demo --out $(RUNS)/demo --no-progress
	$(PY) -m analysis.figures --out figures --runs $(RUNS)/demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
