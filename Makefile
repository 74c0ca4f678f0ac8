# Developer shortcuts. `make check` runs what CI runs (the whole pytest suite, which includes
# ruff, mypy and the generated-files check), so a green `make check` means a green CI.
PY ?= .venv/bin/python

.PHONY: venv check test lint docs bench-plan

venv:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test]'

check: test

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check kernel tests tools
	$(PY) -m mypy kernel

docs:
	$(PY) tools/gen_docs.py

bench-plan:
	$(PY) tools/bench_plan.py
