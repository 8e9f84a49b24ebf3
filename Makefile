# Every target installs what it needs into .venv when it is missing,
# so a fresh clone needs nothing but python3 >= 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install compile demo test bench lint format clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,sandbox]"
	@touch $(STAMP)

# Byte-compile the package: with PYTHONDONTWRITEBYTECODE set (as on some machines) an
# editable install would otherwise compile every module again at each launch (~60 ms).
compile: $(STAMP)
	@$(BIN)/python -m compileall -q batcher

install: compile

demo: compile
	$(BIN)/python -m batcher.demo

test: $(STAMP)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 8 --dist worksteal --durations=10

bench: compile
	$(BIN)/python -m tests.bench

lint: $(STAMP)
	$(BIN)/ruff check batcher tests
	$(BIN)/ruff format --check batcher tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix batcher tests
	$(BIN)/ruff format batcher tests

clean:
	rm -rf $(VENV) .batcher .pytest_cache build *.egg-info
