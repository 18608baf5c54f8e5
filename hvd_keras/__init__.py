"""hvd_keras: Horovod data-parallel training for Keras 3.

The public API is loaded on its first use (`hvd_keras.init()`, `from hvd_keras
import DistributedOptimizer`), which imports TensorFlow and horovod and hooks
Keras's trainer (`hvd_keras._api`). `import hvd_keras` alone imports neither,
so that `hvd-keras build-horovod` and `hvd-keras doctor` run where horovod is
missing or broken, and the launcher starts at once. Where horovod is missing,
the first use says so in one line with the command that fixes it.
Submodules hold one concept each.
"""

from hvd_keras._version import __version__  # noqa: F401

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "exact_metrics",
    "plan",
    "planner",
    "plot_history",
    "rank_zero_output",
    "resume",
    "scale_learning_rate",
    "schedules",
    "DistributedOptimizer",
    "barrier",
    "broadcast_state",
    "broadcast_variables",
    "callbacks",
    "data",
    "elastic",
    "layers",
    "init",
    "is_chief",
    "local_rank",
    "local_size",
    "rank",
    "size",
]


def __getattr__(name):
    # Called for names not yet defined here: the public ones load the API.
    # While hvd_keras._api itself imports a submodule by this name, it is not
    # defined there yet, and the AttributeError lets the import system load it.
    if name not in __all__:
        raise AttributeError(f"module 'hvd_keras' has no attribute {name!r}")
    import importlib

    if name == "elastic":  # a feature on top of the API, which imports it
        return importlib.import_module("hvd_keras.elastic")
    return getattr(importlib.import_module("hvd_keras._api"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
