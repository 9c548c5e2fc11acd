# One target per task. Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/studypub demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/authoring.py
	$(BIN)/python bench/feed.py
	$(BIN)/python bench/sqlite_durability.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/bridge.py
	$(BIN)/python bench/outbox_index.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache studypub.db*
