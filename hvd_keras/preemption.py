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

#: The key under which the compiled step returns the agreed flags; taken out
#: of the logs before Keras or any callback sees them.
LOG_KEY = "_hvd_keras_agreed_stop"


class StopRequests:
    """This rank's requests to stop and the ones all ranks agreed on, as one object (`requests`).

    Three requests travel: [0] preemption (a signal), [1] a callback set
    `model.stop_training`, [2] under elastic training, rank 0 heard from
    horovodrun that hosts were added or removed (`hvd_keras.elastic`: every
    rank then commits and resets after the same step). A request is a flag
    in a variable that the
    distributed optimizer's fused allreduce carries (`optimizer.reduce`);
    the agreed flags come back as an output of the compiled step.

    They are read one step late: at the end of batch N the flags of step
    N - 1 are converted, whose computation has finished by then on a GPU,
    while step N's flags stay a tensor. Converting step N's own flags would
    make the host wait for the device after every batch, so that it could
    never queue the next step ahead. Every rank reads the same step's flags,
    so they still stop after the same step, one later than they learnt it.
    """

    PREEMPT, STOP, HOSTS = 0, 1, 2
    COUNT = 3

    def __init__(self):
        self._variables = None
        # This rank's requests as Python values too: read once per batch,
        # they cost nothing, where reading a variable is an eager op (~100 us).
        self.local = [False] * self.COUNT
        self._agreed = [False] * self.COUNT
        self._pending = None        # the last step's flags, a tensor not read yet
        self.steps_returned = 0     # train function calls that returned flags (tests)

    def variables(self):
        """(requested here, requested by any rank): float32 vectors [preempt, stop, hosts], made once."""
        if self._variables is None:
            with tf.init_scope():
                zeros = [0.0] * self.COUNT
                self._variables = (tf.Variable(zeros, trainable=False, name="hvd_keras_stop_local"),
                                   tf.Variable(zeros, trainable=False, name="hvd_keras_stop_agreed"))
        return self._variables

    def request(self, index):
        self.local[index] = True
        self.variables()[0][index].assign(1.0)

    def reset(self):
        local, agreed = self.variables()
        local.assign([0.0] * self.COUNT)
        agreed.assign([0.0] * self.COUNT)
        self.local = [False] * self.COUNT
        self._agreed = [False] * self.COUNT
        self._pending = None

    def step_returned(self, flags):
        """Takes the flags one train function call returned; converts the previous call's."""
        if self._pending is not None:
            self._take(self._pending)
        self._pending = flags
        self.steps_returned += 1

    def flush(self):
        """Converts the flags of the last step too (at an epoch's end, where waiting costs nothing)."""
        if self._pending is not None:
            self._take(self._pending)
            self._pending = None

    def _take(self, flags):
        values = flags.numpy()
        self._agreed = [self._agreed[i] or bool(values[i] > 0.0) for i in range(self.COUNT)]

    def agreed(self):
        """(preemption stop agreed, training stop agreed) as known from the steps read so far."""
        if size() == 1:
            return self.local[self.PREEMPT], self.local[self.STOP]
        if self.steps_returned == 0 and self._variables is not None:
            self._take(self._variables[1])  # no step returned them (yet): the variable itself
        return self._agreed[self.PREEMPT], self._agreed[self.STOP]

    def hosts_updated(self):
        """Whether a hosts-updated notice is agreed (elastic training), as known from the steps read so far."""
        if size() == 1:
            return self.local[self.HOSTS]
        return self._agreed[self.HOSTS]


requests = StopRequests()


def request_stop(*_):
    """Marks this rank as asking to stop for preemption; the signal handler."""
    requests.request(StopRequests.PREEMPT)


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
        logs[LOG_KEY] = requests.variables()[1].read_value()
        return logs

    return step


def taking_agreed_flags(train_function, model=None):
    """`train_function` with the agreed flags taken out of its logs and handed to `requests`.

    Once a training stop is agreed, it sets `model.stop_training` itself,
    in the main thread before Keras's loop checks it, so that no callback
    has to run after every batch: Keras then dispatches batch ends
    asynchronously (where no other callback needs them), and the host never
    waits for the device to read the flags.
    """
    def train(iterator):
        logs = train_function(iterator)
        flags = logs.pop(LOG_KEY, None) if isinstance(logs, dict) else None
        if flags is not None:
            requests.step_returned(flags)
            if model is not None and requests.agreed()[StopRequests.STOP]:
                model.stop_training = True
        return logs

    return train


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
