# Two commands matter: `make demo` and `make test`. Both build the venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# One BLAS thread per process: ranks on one machine must not oversubscribe the cores.
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The full Fashion-MNIST is used when found ($DPTRAIN_DATA, ../shared/datasets, ~/.cache/dptrain,
# /usr/share/datasets/fashion-mnist); otherwise the subset embedded in the package (and a notice).
DATA_HINT := $(firstword $(wildcard ../shared/datasets/fashion-mnist))
demo: venv
	$(if $(DATA_HINT),DPTRAIN_DATA=$${DPTRAIN_DATA:-$(abspath ../shared/datasets)} )$(PY) -m launcher run configs/local.yaml

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/engine_step.py
	$(PY) benchmarks/allreduce.py
	$(PY) benchmarks/ddp.py
	-$(PY) benchmarks/hierarchical.py   # needs root (network namespaces); skipped otherwise

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
