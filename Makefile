# Two entry points, both self-contained on a fresh machine:
#   make demo   set up .venv and run the offline demo (the seed's workflow)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PLUGINS = $(wildcard plugins/*/pyproject.toml)

.PHONY: setup demo test lint bench clean

$(BIN)/graphopt: pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint,ray]' $(foreach p,$(dir $(PLUGINS)),-e $(p))
	touch $@

setup: $(BIN)/graphopt

demo: setup
	$(BIN)/graphopt demo

# One worker per core (at most 4: each holds TensorFlow and its confined child), a test file per worker.
test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# ruff (style, no print outside the CLI, no module-level TensorFlow imports) and mypy on graphopt/.
lint: setup
	$(BIN)/ruff check graphopt plugins tests benchmarks examples docs
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
