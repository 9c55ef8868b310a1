# The two commands: `make run` starts the whole system locally, `make test` runs every test.
# Both set up what is missing first (system packages via apt, the .venv with pip).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test lint bench setup clean

setup:
	scripts/bootstrap run

run:
	scripts/bootstrap run
	$(PY) scripts/run_local.py

test:
	scripts/bootstrap test
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .

bench:
	$(PY) bench/inference.py
	$(PY) bench/device.py

clean:
	rm -rf var .pytest_cache .ruff_cache
