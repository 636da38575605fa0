# `make test` and `make book` set everything up themselves: a .venv in the repo installed from
# requirements-lock.txt, the package in editable mode, and the Jupyter kernel "fidelity-book".
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The LAVIS captioner's own environment (LAVIS 1.0.2 pins transformers<4.27, which diffusers cannot live with), and the
# pins requirements-lavis.txt was resolved from: the book's torch, LAVIS's only release, and the numpy/pandas under
# which its opencv-python-headless==4.5.5.64 imports.
LAVIS_VENV := .venv-lavis
LAVIS_PY := $(LAVIS_VENV)/bin/python
LAVIS_PINS := torch==2.14.1 torchvision==0.29.1 salesforce-lavis==1.0.2 "numpy<2" "pandas<2.3"
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast book rehearse lab lock lavis lavis-lock clean-venv

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

rehearse: setup  # the paper book on random-weight stand-ins, offline, killed in chapter 2 and resumed (reports-rehearsal/)
	$(PY) -m fidelity_lib.rehearsal --out reports-rehearsal

lab: setup
	$(VENV)/bin/jupyter lab

lock:
	{ echo '# Exact versions CI and `make` install (written by `make lock` from a venv that resolved pyproject.toml on Python 3.11).'; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -E '^(fidelity-book|pip)=='; } > requirements-lock.txt

$(LAVIS_VENV)/.installed: requirements-lavis.txt
	test -x $(LAVIS_PY) || $(PYTHON) -m venv $(LAVIS_VENV)
	$(LAVIS_PY) -m pip install -q -r requirements-lavis.txt
	touch $@

lavis: $(LAVIS_VENV)/.installed  # LavisCaptioner's worker (fidelity_lib/lavis_worker.py) runs in it

lavis-lock:  # resolve LAVIS_PINS in a scratch venv and write what it installed to requirements-lavis.txt
	rm -rf $(LAVIS_VENV)-lock && $(PYTHON) -m venv $(LAVIS_VENV)-lock
	$(LAVIS_VENV)-lock/bin/python -m pip install -q $(LAVIS_PINS)
	{ echo '# Exact versions `make lavis` installs into .venv-lavis, the LAVIS captioner'"'"'s own environment (written by'; \
	  echo '# `make lavis-lock` from a scratch venv that resolved $(LAVIS_PINS) on Python 3.11).'; \
	  echo '# LAVIS 1.0.2, its only release, pins transformers<4.27, timm==0.4.12, fairscale==0.4.4 and'; \
	  echo '# opencv-python-headless==4.5.5.64, whose cv2 imports only with numpy<2 and pandas<2.3.'; \
	  $(LAVIS_VENV)-lock/bin/python -m pip freeze --all | grep -v -E '^pip=='; } > requirements-lavis.txt
	rm -rf $(LAVIS_VENV)-lock

clean-venv:
	rm -rf $(VENV)
