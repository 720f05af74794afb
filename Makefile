# Two commands for a new user (README.md): `make demo` and `make test`.
# Both create the virtual environment .venv/ inside the checkout when it is missing; `make test`
# also installs the optional dense CRF (the crf extra, compiled from source), so that every test
# runs.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: demo test test-fast lint dry-run clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.crf-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[crf]'
	touch $@

## demo: run the whole pipeline on the embedded demo (config.yaml)
demo: $(VENV)/.installed
	snakemake --cores $(CORES)

## test: lint, then the test suite
test: lint $(VENV)/.crf-installed
	pytest -q

## test-fast: lint, then the tests not marked slow or slurm (day-to-day work; under 2 minutes)
test-fast: lint $(VENV)/.crf-installed
	pytest -q -m "not slow and not slurm"

lint: $(VENV)/.installed
	ruff check maskdistill tests benchmarks
	ruff format --check maskdistill tests benchmarks
	snakefmt --check Snakefile rules

## dry-run: list the jobs the demo would run
dry-run: $(VENV)/.installed
	snakemake -n --cores $(CORES)

clean:
	rm -rf results .snakemake
