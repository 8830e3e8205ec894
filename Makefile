# One entry point for people and CI: `make run` and `make test` set up everything first.
VENV ?= .venv
PYTHON ?= python3
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test mutate
setup: $(VENV)/.installed

# constraints.txt pins torch to the CPU build; without it pip pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test,dashboards,tensorboard,mlflow]'
	touch $@

# Real Fashion-MNIST for the learning tests: Debian's package, installed when we may.
# System packages the tests use for real: the dataset, and Prometheus for the metrics test.
data:
	@if [ ! -d $(FMNIST) ] || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist prometheus; \
	  else echo "note: run: sudo apt-get install dataset-fashion-mnist prometheus"; fi; \
	fi

run: setup
	$(VENV)/bin/raysim run

test: setup data
	$(VENV)/bin/pytest -q

# Mutation testing (mutmut, config in pyproject.toml [tool.mutmut]): the engine, cost models and
# AutoFLIP against the fast Ray-free tests; prints every mutant not killed and the score.
# Starts afresh each time (mutmut keeps verdicts for unchanged code even after tests change);
# MUTANTS='raysim.engine.stats.*' re-tests just those, keeping the other results.
# `$(VENV)/bin/mutmut run --max-children 2` resumes an interrupted run;
# `$(VENV)/bin/python tools/mutation_report.py --diff` shows each survivor's change.
# One torch thread per mutant process: two processes of two threads each on two cores
# would only contend (the tests pass the same with one thread).
MUTATE_JOBS ?= 2
MUTANTS ?=
$(VENV)/.mutation: $(VENV)/.installed
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[mutation]'
	touch $@

mutate: $(VENV)/.mutation
	$(if $(MUTANTS),,rm -rf mutants)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	@$(VENV)/bin/python tools/mutation_report.py
