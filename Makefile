# make demo | make test | make test-all | make bench | make lint — each creates .venv and installs
# on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

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

# Fast suite (< 25 min on 2 CPU cores); slow tests are marked and run by test-all.
test: $(STAMP)
	$(BIN)/python -m pytest tests -q -m 'not slow'

test-all: $(STAMP)
	$(BIN)/python -m pytest tests -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# Lint only (rules in ruff.toml); the code is not `ruff format`-clean, so no format check.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
