# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtual environment and installs medlossy into it when missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medlossy-installed
DEMO_STAMP := $(VENV)/.medlossy-demo-installed
TORCH_VERSION ?= 2.13.0
CHECK_TORCH = $(BIN)/python -c 'import sys, torch; sys.exit(not torch.__version__.startswith("$(TORCH_VERSION)"))' \
	  || { echo "torch is no longer $(TORCH_VERSION); see the nnunet extra in pyproject.toml"; exit 1; }

.PHONY: install demo test lint bench clean

# The demo needs medlossy and deepbet (10 MB, its weights inside: the demo's pretrained
# network); the tests also need nnU-Net v2 and the test tools. Two stamps, so that
# `make demo` on a fresh machine installs only what it runs.
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "medlossy needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of PyTorch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[deepbet]"
	$(CHECK_TORCH)
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	# The README's one command for medlossy with nnU-Net v2, plus the test tools and deepbet
	# (its test really runs it; hd-bet's 294 MB wheel is left out and its test skips).
	$(BIN)/python -m pip install --quiet -e ".[test,nnunet,deepbet]"
	$(CHECK_TORCH)
	touch $(STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/medlossy study --demo --out demo-out

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=20  # the slowest tests, for keeping CI well under 30 minutes

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
