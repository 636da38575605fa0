# `make test` and `make book` set everything up themselves: a .venv in the repo installed from
# requirements-lock.txt, the package in editable mode, and the Jupyter kernel "fidelity-book".
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast book lab lock clean-venv

$(STAMP): requirements-lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name fidelity-book --display-name "fidelity-book (.venv)"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  # every test not marked slow (each slow one takes over ~10 s)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

book: setup
	$(PY) -m fidelity_lib.book --profile smoke

lab: setup
	$(VENV)/bin/jupyter lab

lock:
	{ echo '# Exact versions CI and `make` install (written by `make lock` from a venv that resolved pyproject.toml on Python 3.11).'; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -E '^(fidelity-book|pip)=='; } > requirements-lock.txt

clean-venv:
	rm -rf $(VENV)
