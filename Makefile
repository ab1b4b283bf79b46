# Two set-up commands on a fresh machine: `make example` (the Pt+CO main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: venv test example clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

example: venv
	$(PY) examples/pt_co/run.py

clean:
	rm -rf $(VENV) examples/pt_co/out .pytest_cache
