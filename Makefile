# hvd_keras: every target installs what it needs first (tools/bootstrap.sh).
# HVD_KERAS_DEVICE=gpu|cpu (default: detected) and HVD_KERAS_TF=<version>
# (a row of tools/versions.txt) choose what `setup` installs.
PYTHON := .venv/bin/python
HOROVODRUN := .venv/bin/horovodrun
NP ?= 2
# OpenMPI refuses to start as root unless told.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup setup-test run test bench check-gpu check-gpu-build compat clean

setup:
	bash tools/bootstrap.sh

setup-test:
	bash tools/bootstrap.sh --with-slurm

# The main job: the digits example on $(NP) processes, through hvd-keras run
# (its recommended settings) on MPI, the faster CPU controller measured in
# bench/peers.py. A fresh output directory each time: run the script by hand
# to see it resume.
run: setup
	rm -rf runs/make-run
	.venv/bin/hvd-keras run -np $(NP) --mpi examples/train_digits.py --output runs/make-run

test: setup-test
	$(PYTHON) -m pytest tests

# tf_keras (Apache-2.0), matching TensorFlow: bench/peers.py measures Horovod's
# own Keras layer, which runs only on tf.keras (TF_USE_LEGACY_KERAS=1).
bench: setup
	-$(PYTHON) -m pip install -q --no-deps "tf_keras~=$$(TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) -c 'import tensorflow as tf; print(tf.__version__)')"
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PYTHON) bench/overhead.py
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PYTHON) bench/peers.py
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PYTHON) bench/settings.py
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PYTHON) bench/resnet.py
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PYTHON) bench/pipeline.py

# One minute on a GPU node (skips in one line elsewhere): an exact allreduce
# right after a long kernel, a 2-rank split-XLA step, NCCL in use.
check-gpu: setup
	bash tools/check_gpu.sh

# Proves the GPU (NCCL) build of horovod on any machine, GPU or not: a venv of
# its own (.venv-gpu) with tensorflow[and-cuda], a CUDA toolkit assembled from
# PyPI wheels, and checks that the build has CUDA and NCCL and still trains on
# CPU tensors through Gloo and MPI.
check-gpu-build:
	HVD_KERAS_DEVICE=gpu HVD_KERAS_CUDA_FROM_WHEELS=1 HVD_KERAS_VENV=.venv-gpu bash tools/bootstrap.sh
	PATH=$(CURDIR)/.venv-gpu/bin:$$PATH bash tools/check_gpu_build.sh .venv-gpu

# The version matrix: every TensorFlow/Keras combination of tools/versions.txt in
# a venv of its own under .venv-compat/, horovod built for it, the core tests
# run; prints the Markdown table. `make compat COMBOS="2.16.2 2.21.0-keras3.15.1"`
# runs a subset.
compat:
	bash tools/compat.sh $(COMBOS)

clean:
	rm -rf .venv .venv-gpu build *.egg-info .pytest_cache
