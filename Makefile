# make demo | make test | make test-hf | make test-gcs | make test-all | make bench | make lint — each creates
# .venv and installs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HF_STAMP := $(VENV)/.installed-hf
# torch for the [hf] extra: the CPU build (a plain `torch` from PyPI is a CUDA build of several GB).
HF_TORCH ?= torch==2.13.0
WORKDIR ?= runs/demo
# pytest-xdist workers; each test file stays on one worker (its module fixtures are built once).
# Each worker holds up to ~5 GB; 2 suit a 2-core, 24 GB machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest tests -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

.PHONY: venv demo test test-all test-hf test-gcs bench lint clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The [hf] extra (torch, transformers, safetensors): only the converters' parity tests need it.
$(HF_STAMP): $(STAMP) setup.py
	$(BIN)/pip install -q '$(HF_TORCH)'
	$(BIN)/pip install -q -e '.[hf,test]'
	touch $(HF_STAMP)

# Builds the embedded dataset, trains the tiny two-tower model (it evaluates zero-shot
# retrieval on the test split at the end) and prints the results table.
demo: $(STAMP)
	$(BIN)/vidlang data moving_shapes/small
	$(BIN)/vidlang train --config configs/two_tower.py:tiny --workdir $(WORKDIR)

# Fast suite (~12 min on 2 CPU cores with 2 workers); slow tests are marked, run by test-all.
# The hf tests (parity against transformers) need torch: `make test-hf` installs it and runs them.
test: $(STAMP)
	$(PYTEST) -m 'not slow and not hf and not gcs'

# gs:// workdirs end to end against a GCS emulator on 127.0.0.1 (~3 min); .ci/run runs it.
test-gcs: $(STAMP)
	$(PYTEST) -m gcs

test-hf: $(HF_STAMP)
	$(PYTEST) -m hf

test-all: $(HF_STAMP)
	$(PYTEST)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# Lint only (rules in ruff.toml); the code is not `ruff format`-clean, so no format check.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
