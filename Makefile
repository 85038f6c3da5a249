# dcim: the two commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_QUIET ?= -q

.PHONY: demo test bench venv bytecode lint typecheck dist clean

$(VENV)/.installed: pyproject.toml setup.py dcim/drivers/modbus/_float32.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) -e '.[test,cluster]'
	touch $@

venv: $(VENV)/.installed

## bytecode: compile the checkout's modules once. pip does not compile an editable install, and a Python
## started with PYTHONDONTWRITEBYTECODE set (as on this machine kind) compiles every dcim module again at
## each start: about 0.15 s of every `dcim` command here, and the suite starts one about 125 times.
bytecode: venv
	$(PY) -m compileall -q -j 0 dcim tests bench >/dev/null

## demo: simulators for a small AI hall, an embedded MQTT broker, the daemon, live on the terminal
demo: venv bytecode
	$(VENV)/bin/dcim demo -c examples/hall.yaml

## test: ruff, mypy --strict, install the real servers the tests use (Debian packages), run the whole suite
test: venv lint typecheck bytecode
	bash scripts/install-test-deps.sh
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## bench: run every benchmark and print its figures
bench: venv
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b $(BENCH_ARGS); done

## lint: ruff, then the layer contracts of pyproject.toml ([tool.importlinter]); a wrong import is named
lint: venv
	$(VENV)/bin/ruff check dcim tests bench
	$(VENV)/bin/lint-imports --no-cache --no-logo

typecheck: venv
	$(PY) -m mypy

## dist: the sdist and the wheel in dist/ (the wheel is built from the sdist, as a release is)
dist: venv
	$(PY) -m build --outdir dist

clean:
	rm -rf $(VENV) .demo build dist *.egg-info dcim/drivers/modbus/_float32.*.so
