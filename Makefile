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

demo: $(STAMP)
	$(PY) -m per_core.demo --out $(RUNS)/demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# pytest exits 5 when it collects no test: that is a failure here, never masked.
test: $(STAMP) lint
	$(PY) -m pytest -n $(JOBS) -q

bench: $(STAMP)
	$(PY) -m bench

figures: $(STAMP)
	$(PY) -m analysis.figures --out figures

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
