# make demo | make test | make test-all | make bench | make lint — each creates .venv and installs
# on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
# pytest-xdist workers; each test file stays on one worker (its module fixtures are built once).
# Each worker holds up to ~5 GB; 2 suit a 2-core, 24 GB machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest tests -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

.PHONY: venv demo test test-all bench lint clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Builds the embedded dataset, trains the tiny two-tower model (it evaluates zero-shot
# retrieval on the test split at the end) and prints the results table.
demo: $(STAMP)
	$(BIN)/vidlang data moving_shapes/small
	$(BIN)/vidlang train --config configs/two_tower.py:tiny --workdir $(WORKDIR)

# Fast suite (~12 min on 2 CPU cores with 2 workers); slow tests are marked, run by test-all.
test: $(STAMP)
	$(PYTEST) -m 'not slow'

test-all: $(STAMP)
	$(PYTEST)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# Lint only (rules in ruff.toml); the code is not `ruff format`-clean, so no format check.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
