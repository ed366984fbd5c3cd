# make tune: set up .venv if missing, then run the full auto-tune on the default study.
# make test: set up .venv if missing, then run the whole test suite, slow tests too (.ci/run).
# make test-fast: the default suite (plain pytest), without the slow tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= studies/mnist1d_cnn.toml

.PHONY: setup tune test test-fast lint clean

setup: $(VENV)/.installed

# Re-installs when pyproject.toml changes. torch comes from pip's configured index.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

tune: setup
	$(BIN)/tuner run $(STUDY)

# A later -m overrides pyproject's addopts (-m 'not slow', the default suite).
test: setup
	$(BIN)/python -m pytest -m "slow or not slow"

test-fast: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
