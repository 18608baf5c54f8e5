"""Agreement between ranks to stop after the same step when a job is preempted.

A signal (SIGTERM, SIGUSR1: what Slurm sends before it kills or requeues a
job) reaches one or a few ranks. The local request rides along in the
gradient allreduce of the next step, so every rank learns of it at the same
step without an extra collective.
"""

import signal

from hvd_keras._horovod import tf
from hvd_keras.runtime import barrier, is_chief, size

#: Exit code of a process that stopped because of preemption (EX_TEMPFAIL):
#: run the same command again to resume.
PREEMPTED_EXIT_CODE = 75

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_flags = {}
# The carried flags: [0] preemption (a signal), [1] a callback set model.stop_training.
_PREEMPT, _STOP = 0, 1
# This rank's requests as Python values too: read once per batch, they cost
# nothing, where reading a variable is an eager op (~100 us).
_local = [False, False]
# The agreed flags as the last train function call returned them (an output
# of the compiled step, already on the host), or None: then the variable is read.
_returned = {"flags": None}

#: The key under which the compiled step returns the agreed flags; taken out
#: of the logs before Keras or any callback sees them.
LOG_KEY = "_hvd_keras_agreed_stop"


def flags():
    """(requested here, requested by any rank) as float32 vectors [preempt, stop], made once."""
    if not _flags:
        with tf.init_scope():
            _flags["local"] = tf.Variable([0.0, 0.0], trainable=False, name="hvd_keras_stop_local")
            _flags["agreed"] = tf.Variable([0.0, 0.0], trainable=False, name="hvd_keras_stop_agreed")
    return _flags["local"], _flags["agreed"]


def request_stop(*_):
    """Marks this rank as asking to stop for preemption; the signal handler."""
    _local[_PREEMPT] = True
    flags()[0][_PREEMPT].assign(1.0)


def request_training_stop():
    """Marks this rank as asking every rank to stop training (model.stop_training was set here)."""
    _local[_STOP] = True
    flags()[0][_STOP].assign(1.0)


def reset():
    local, agreed = flags()
    local.assign([0.0, 0.0])
    agreed.assign([0.0, 0.0])
    _local[:] = [False, False]
    _returned["flags"] = None


def with_agreed_flags(step_function):
    """`step_function` whose logs also return the agreed flags, read after the step's allreduce.

    The read follows the allreduce's assignment of the same variable (the
    traced function keeps the order of operations on one resource).
    """
    def step(data):
        logs = step_function(data)
        if not isinstance(logs, dict):
            return logs
        logs = dict(logs)
        logs[LOG_KEY] = flags()[1].read_value()
        return logs

    return step


def taking_agreed_flags(train_function):
    """`train_function` with the agreed flags taken out of its logs and kept for `agreed()`."""
    def train(iterator):
        logs = train_function(iterator)
        _returned["flags"] = logs.pop(LOG_KEY, None) if isinstance(logs, dict) else None
        return logs

    return train


def agreed():
    """(preemption stop agreed, training stop agreed), as known after the last step.

    Callbacks call it once per batch. The flags the step returned are read
    (~1 us: the value is already on the host); the variable only where the
    train function does not return them.
    """
    if size() == 1:
        return _local[_PREEMPT], _local[_STOP]
    returned = _returned["flags"]
    values = (flags()[1] if returned is None else returned).numpy()
    return bool(values[_PREEMPT] > 0.0), bool(values[_STOP] > 0.0)


def _agreed(index):
    return agreed()[index]


def stop_agreed():
    """True once any rank asked to stop for preemption, on every rank at the same step."""
    return _agreed(_PREEMPT)


def training_stop_agreed():
    """True once any rank asked to stop training, on every rank at the same step."""
    return _agreed(_STOP)


def training_stop_pending():
    """True when this rank asked to stop training and the other ranks have not learnt it yet."""
    return _local[_STOP]


def install_handlers():
    """Routes SIGTERM and SIGUSR1 to `request_stop`; returns the old handlers."""
    return {s: signal.signal(s, request_stop) for s in SIGNALS}


def restore_handlers(old):
    for s, handler in old.items():
        signal.signal(s, handler)


def exit_after_fit(model):
    """Ends the process with `PREEMPTED_EXIT_CODE` when `Checkpoint` stopped `fit` for preemption.

    Runs when `fit` returns, after every callback's `on_train_end` (a
    `CSVLogger` has closed its file), on every rank; no rank exits before
    rank 0's checkpoint is on disk.
    """
    directory = getattr(model, "_hvd_preempted", None)
    if directory is None:
        return
    model._hvd_preempted = None
    barrier("hvd_keras.preempted")
    if is_chief():
        print(f"hvd_keras: preempted; checkpoint written to {directory}; "
              f"exiting with code {PREEMPTED_EXIT_CODE}", flush=True)
    raise SystemExit(PREEMPTED_EXIT_CODE)
