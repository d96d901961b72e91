# The two commands of the README: `make demo` and `make test`. Both set everything up first.
VENV := .venv
BIN  := $(VENV)/bin

.PHONY: setup demo test test-fast lock bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/miipher2 pipeline run --local

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python -m bench

# requirements.lock (run time, the image), requirements-dev.lock (tests), infra/mlflow/requirements.txt,
# from what .venv holds: declare a new dependency in pyproject.toml, install it, then `make lock`.
lock:
	$(BIN)/python scripts/lock.py
