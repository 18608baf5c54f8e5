# hvd_keras: every target installs what it needs first (tools/bootstrap.sh).
PYTHON := .venv/bin/python
HOROVODRUN := .venv/bin/horovodrun
NP ?= 2
# OpenMPI refuses to start as root unless told.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup setup-test run test bench clean

setup:
	bash tools/bootstrap.sh

setup-test:
	bash tools/bootstrap.sh --with-slurm

# The main job: the digits example on $(NP) processes.
# A fresh output directory each time: run the script by hand to see it resume.
run: setup
	rm -rf runs/make-run
	PATH=$(CURDIR)/.venv/bin:$$PATH $(HOROVODRUN) -np $(NP) --gloo $(PYTHON) examples/train_digits.py --output runs/make-run

test: setup-test
	$(PYTHON) -m pytest tests

bench: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PYTHON) bench/overhead.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
