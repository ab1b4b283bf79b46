# Two set-up commands on a fresh machine: `make example` (the Pt+CO main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

EXAMPLE_ARGS ?=

.PHONY: venv example-venv test example example-readme example-fe_h clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[test]"
	touch $@

# the example's extra (SevenNet, its default labeller) on top of the test environment; torch
# is pinned again so that pip keeps the installed CPU build
$(VENV)/.installed-example: $(VENV)/.installed
	$(PIP) install "torch==$(TORCH_VERSION)" -e ".[test,example]"
	touch $@

venv: $(VENV)/.installed

example-venv: $(VENV)/.installed-example

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# the Pt + CO main job (examples/pt_co/README.md: the reference run and its time); OMP_NUM_THREADS
# is the thread budget of the whole run (default: the CPUs); e.g. EXAMPLE_ARGS="--labeller emt"
# or "--full". A rerun skips the jobs whose inputs did not change.
example: example-venv
	$(PY) examples/pt_co/run.py $(EXAMPLE_ARGS)

# after a reference run: its report.json and timings.json into examples/pt_co/reference/ and
# the README's results block rendered from them
example-readme:
	$(PY) examples/pt_co/readme.py --from examples/pt_co/out

# the second example, bcc Fe with H, by the generic commands (examples/fe_h/README.md); at
# most 15 minutes on 2 cores
example-fe_h: example-venv
	PATH="$(abspath $(VENV))/bin:$$PATH" PYTHON="$(abspath $(PY))" bash examples/fe_h/run.sh

clean:
	rm -rf $(VENV) examples/pt_co/out examples/fe_h/out .pytest_cache
