# make demo | make test | make test-hf | make test-gcs | make test-tpu | make test-faults | make test-bench | make test-all | make bench | make lint
# — each creates .venv and installs on first use, with the versions pinned in constraints.txt (the
# ones our tests ran with; launch/ installs the same). `make lock` refreshes them, on purpose only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HF_STAMP := $(VENV)/.installed-hf
TPU_STAMP := $(VENV)/.installed-tpu
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt
# torch for the [hf] extra: the CPU build (a plain `torch` from PyPI is a CUDA build of several GB).
HF_TORCH ?= torch==2.13.0
WORKDIR ?= runs/demo
# pytest-xdist workers; each test file stays on one worker (its module fixtures are built once).
# Each worker holds up to ~5 GB; 2 suit a 2-core, 24 GB machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest tests -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

.PHONY: venv demo test test-all test-hf test-gcs test-tpu test-faults test-bench bench lint lock clean

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP)

# The [hf] extra (torch, transformers, safetensors): only the converters' parity tests need it.
$(HF_STAMP): $(STAMP) setup.py
	$(PIP_INSTALL) '$(HF_TORCH)'
	$(PIP_INSTALL) -e '.[hf,test]'
	touch $(HF_STAMP)

# The [tpu] extra (libtpu, ~0.3 GB): compiling for TPU slices on this CPU (vidlang compile).
$(TPU_STAMP): $(STAMP) setup.py
	$(PIP_INSTALL) -e '.[tpu,test]'
	touch $(TPU_STAMP)

# Builds the embedded dataset, trains the tiny two-tower model (it evaluates zero-shot
# retrieval on the test split at the end) and prints the results table.
demo: $(STAMP)
	$(BIN)/vidlang data moving_shapes/small
	$(BIN)/vidlang train --config configs/two_tower.py:tiny --workdir $(WORKDIR)

# Fast suite (~16 min on 2 CPU cores with 2 workers); slow tests are marked, run by test-all.
# The hf tests (parity against transformers) need torch: `make test-hf` installs it and runs them.
test: $(STAMP)
	$(PYTEST) -m 'not slow and not hf and not gcs and not tpu and not faults and not bench'

# Faults injected into real runs (SIGTERM to one of two processes, a full disk, every family
# killed and resumed; ~6 min); .ci/run runs it.
test-faults: $(STAMP)
	$(PYTEST) -m faults

# gs:// workdirs end to end against a GCS emulator on 127.0.0.1 (~3 min); .ci/run runs it.
test-gcs: $(STAMP)
	$(PYTEST) -m gcs

test-hf: $(HF_STAMP)
	$(PYTEST) -m hf

# The train step of tiny configs compiled for a TPU v5e 2x2 slice, without the slice.
test-tpu: $(TPU_STAMP)
	$(PYTEST) -m tpu

# Every benchmark's --smoke mode (tiny sizes, one repeat; ~3 min), so that none rots.
test-bench: $(HF_STAMP)
	$(PYTEST) -m bench

test-all: $(HF_STAMP) $(TPU_STAMP)
	$(PYTEST)

# Pins every installed package (all extras) to constraints.txt; run after an upgrade you tested.
# Local version labels (torch's +cpu) are dropped so that the pins hold on any index.
lock: $(HF_STAMP) $(TPU_STAMP)
	$(BIN)/pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//' | LC_ALL=C sort > constraints.txt

# Our speed and memory against the tools users compare us with (torch peers: the [hf] extra),
# each a ratio measured in one run: JSON in benchmarks/results/, then benchmarks/RESULTS.md.
BENCHMARKS := lm_vs_llama masked_video_vs_videomae attention_one_device mfu input_pipeline \
	masked_encoder long_context ring_attention_memory contrastive_loss_memory world_model_step \
	init_from_memory
bench: $(HF_STAMP)
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done
	$(BIN)/python benchmarks/report.py

# Lint only (rules in ruff.toml); the code is not `ruff format`-clean, so no format check.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
