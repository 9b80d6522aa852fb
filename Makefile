# fusionkit: `make demo` runs the whole notebook chain on the embedded default data,
# `make test` runs the test suite. Both create .venv and install pinned dependencies on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
export MPLBACKEND := Agg

.PHONY: install demo smoke test lab notebooks bench lint clean-runs help

help:
	@echo "make demo     run the notebook chain on the default profile (reports/latest)"
	@echo "make smoke    run the chain on the tiny smoke profile"
	@echo "make test     run the test suite"
	@echo "make lab      open the notebooks in JupyterLab"
	@echo "make notebooks  after editing a notebook: its install cell and its jupytext script (notebooks/*.py)"
	@echo "make bench    run the benchmarks (JSON in benchmarks/results/)"
	@echo "make lint     ruff"

install: $(STAMP)

# Re-installs only when pyproject.toml or requirements.lock changed (or .venv is missing).
# uv installs the lock (about 30 s on 2 cores against over 2 minutes for pip, most of it unpacking
# torch); it reads no pip configuration, so pip's extra indexes and find-links (a local wheel mirror)
# are handed to it. Where uv cannot install, pip does the same install.
# --compile-bytecode: pip writes the packages' .pyc files at install, uv by default leaves that to
# the first import - which never happens where PYTHONDONTWRITEBYTECODE is set (this machine, CI):
# every process then compiles torch, transformers, sklearn, pandas ... from source again, about
# 3.5 s of each notebook kernel's, `fusionkit predict`'s and `serve`'s start (6.5 s -> 3.0 s for
# the notebooks' imports; benchmarks/README.md).
UV_VERSION := 0.13.9
PIP_SOURCES = $(foreach u,$(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null),--extra-index-url $(u)) \
	$(foreach d,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),$(if $(wildcard $(d)),--find-links $(d)))
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)" \
	  && $(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode --index-strategy unsafe-best-match $(PIP_SOURCES) \
	     -c requirements.lock -e ".[dev]" \
	  || { echo "uv could not install the lock: installing with pip"; \
	       $(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"; }
	@# this machine's mirrors split soundfile's wheels over two indexes and uv takes the first
	@# index's (py3-none-any, no libsndfile inside): where it cannot load, pip puts in the
	@# platform wheel that bundles the library (PyPI itself holds both; pip picks the better tag)
	@$(PY) -c "import soundfile" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check \
	  --force-reinstall --no-deps -c requirements.lock soundfile
	$(PY) -m ipykernel install --sys-prefix --name fusionkit --display-name "Python (fusionkit)" >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fusionkit run --profile $(PROFILE)

smoke: $(STAMP)
	$(VENV)/bin/fusionkit run --profile smoke

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

# kernels started by hand get what `fusionkit run` gives its kernels (fusionkit/runtime.py)
lab: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/jupyter lab notebooks/

# each notebook's install cell and its py:percent script (fusionkit/notebook_files.py; tests/notebooks checks them)
notebooks: $(STAMP)
	$(PY) -m fusionkit.notebook_files

bench: $(STAMP)
	@mkdir -p benchmarks/results
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/fusion.py
	$(PY) benchmarks/concurrent_chains.py
	$(PY) benchmarks/predict.py
	test -f reports/runs/bench-features/features.json || $(VENV)/bin/fusionkit run --profile default --only 01,02 --run-id bench-features
	$(PY) benchmarks/compare_ray.py --features-index reports/runs/bench-features/features.json

lint: $(STAMP)
	$(VENV)/bin/ruff check fusionkit tests benchmarks
	$(VENV)/bin/ruff format --check fusionkit tests benchmarks

clean-runs:
	rm -rf reports/runs/* reports/latest
