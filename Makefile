# Set-up and checks. `make test` and `make demo` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,deploy]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check ssd tools tests
	$(PY) -m ruff format --check ssd tools tests

typecheck: install
	$(PY) -m mypy ssd

pytest: install
	$(PY) -m pytest -q

test: lint typecheck pytest

demo: install
	$(PY) -m ssd.cli.demo

# The prepared device check (CUDA): tests, inference and training speed, memory -> docs/results/gpu/
gpu-check: install
	$(PY) -m ssd.cli.gpu_check --device cuda --output-dir docs/results/gpu

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
