# One entry point for people and CI: `make run` and `make test` set up everything first.
VENV ?= .venv
PYTHON ?= python3
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test
setup: $(VENV)/.installed

# constraints.txt pins torch to the CPU build; without it pip pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test,dashboards]'
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
