# Two commands on a fresh machine: `make demo` and `make test`.
# `make demo` installs what the demo needs (vitkit, its offline weights and data); `make test`
# adds the test tools and every export runtime. On a machine without a GPU, a CPU-only PyTorch
# is ~5 GB smaller: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PYTHON      ?= python3
TORCH_INDEX ?=
VENV        := .venv
BIN         := $(VENV)/bin
DEMO_STAMP  := $(VENV)/.demo-installed
DEV_STAMP   := $(VENV)/.dev-installed

.PHONY: install install-dev demo test test-fast lint typecheck docs docs-serve bench fuzz fuzz-api clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
ifneq ($(TORCH_INDEX),)
	$(BIN)/pip install --quiet torch torchvision --index-url $(TORCH_INDEX)
endif

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(DEV_STAMP) $(DEMO_STAMP)

install: $(DEMO_STAMP)

install-dev: $(DEV_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/vitkit demo

# What CI runs: lint, type check and the strict docs build first (seconds to a minute or two),
# then the whole suite.
test: lint typecheck docs
	$(BIN)/python -m pytest

test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench docs/hooks

typecheck: $(DEV_STAMP)
	$(BIN)/mypy src

# The docs site into site/ (offline, a few seconds); --strict fails on a broken link or page.
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(DEV_STAMP)
	$(BIN)/python bench/train_throughput.py

# 100,000 mutated image files through the decoder (the CI tests run a bounded sample).
fuzz: $(DEV_STAMP)
	$(BIN)/python bench/fuzz_decode.py --cases 100000

# 10,000 schemathesis cases against a real server's own /openapi.json (CI runs 400).
fuzz-api: $(DEV_STAMP)
	$(BIN)/python bench/fuzz_api.py --cases 10000

clean:
	rm -rf $(VENV) demo-output runs .pytest_cache site
