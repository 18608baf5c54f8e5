"""A deadline on each rank's train steps: a step that never returns ends the rank with one line.

Horovod cannot end a job whose collective waits on a host that no longer
answers. Its stall check (`HOROVOD_STALL_CHECK_TIME_SECONDS`,
`..._SHUTDOWN_TIME_SECONDS`) runs in its background thread, between two
negotiation cycles, and looks for tensors that some ranks submitted and
others did not. When a link goes down under MPI, every rank has submitted
and that thread itself is blocked inside an MPI call (the negotiation's
`MPI_Allreduce`, or the data's) on a TCP connection that neither fails nor
delivers: the check never runs, TCP retransmits for about 15 minutes
(`net.ipv4.tcp_retries2`), and the job hangs without a word (measured on
namespace hosts, tests/test_hosts.py). Gloo's transport has a timeout of
its own (`HOROVOD_GLOO_TIMEOUT_SECONDS`, 30 s); MPI and NCCL have none.

So each rank keeps its own deadline. hvd_keras's train function records
when each call starts and ends (two clock reads); a daemon thread wakes
once a second and, when a call has run past its deadline, prints one line
naming the host, the rank and the step, and ends the process with
`STALLED_EXIT_CODE`. Under mpirun or horovodrun the launcher then ends
the job; where the launcher cannot be reached (a cut link), each rank's
own deadline ends it, and the rank also ends the OpenMPI daemon (`orted`)
that started it, which would otherwise wait for TCP to give up.

The deadline of a call is the largest of:
- `HVD_KERAS_STEP_TIMEOUT` seconds (default 30; under Gloo twice Gloo's own
  timeout, 60, so that Gloo's error comes first; `0` turns the watchdog off);
- 10 times the typical call (a moving average), for models whose steps
  take seconds, and steps_per_execution;
- for the first call of each train function (tracing, XLA compilation,
  ranks starting at different times), `HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`
  (hvd_keras sets 600).

Only train steps are timed: between steps a rank may work alone (rank 0
writing a checkpoint or running callbacks; validation), and hvd_keras
synchronises the ranks after such phases (its checkpoint broadcast,
`RankAgreement`'s epoch-end vote) before the next step starts. A callback
that makes one rank work alone *inside* an epoch for longer than the
deadline (a large `ModelCheckpoint(save_freq=N)` on rank 0 only) needs a
larger `HVD_KERAS_STEP_TIMEOUT`.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

VARIABLE = "HVD_KERAS_STEP_TIMEOUT"
DEFAULT_SECONDS = 30.0
#: Exit code of a rank whose step ran past its deadline (EX_SOFTWARE).
STALLED_EXIT_CODE = 70
#: A call may take this many times the typical call before it counts as stalled.
TYPICAL_FACTOR = 10.0
# Set by `hvd-keras run`: the process to tell when a rank on its host stalls
# ("host-id:pid"), so that it can end a launcher that waits for a host it
# cannot reach.
LAUNCHER_VARIABLE = "HVD_KERAS_LAUNCHER"
_OPENMPI_DAEMONS = ("orted", "prted")


def step_timeout(environ=None, controller=None):
    """The configured deadline in seconds (0: off), from `HVD_KERAS_STEP_TIMEOUT` or the controller's default.

    Args:
        environ: the environment to read (default `os.environ`).
        controller: "gloo", "mpi" or None; under Gloo the default is twice
            Gloo's own timeout, which then ends the job first.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(VARIABLE)
    if value is None or not value.strip():
        if controller == "gloo":
            return 2 * _seconds(environ, "HOROVOD_GLOO_TIMEOUT_SECONDS", 30.0)
        return DEFAULT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(
            f"{VARIABLE} must be a number of seconds >= 0 (0 turns the watchdog off). Received: "
            f"{VARIABLE}={value!r}. HINT: unset it for the default ({DEFAULT_SECONDS:g} s), or set e.g. 120."
        )
    return seconds


def first_call_seconds(environ=None):
    """The allowance of a train function's first call: Horovod's stall shutdown time, 0 when that is off."""
    return _seconds(os.environ if environ is None else environ, "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", 0.0)


def _seconds(environ, name, default):
    try:
        return max(float(environ.get(name, default)), 0.0)
    except ValueError:
        return default


class Watchdog:
    """Times the calls of train functions on this rank and ends the process when one overruns.

    Args:
        timeout: the deadline floor in seconds (> 0).
        first_call: the allowance of a train function's first call (0: the floor).
        describe: returns (host, rank) for the line, called when it fires.
        on_stall: called with the line instead of ending the process (tests).
    """

    def __init__(self, timeout, first_call=0.0, describe=None, on_stall=None, interval=1.0):
        self.timeout = float(timeout)
        self.first_call = float(first_call)
        self.describe = describe or (lambda: (socket.gethostname(), "?"))
        self.on_stall = on_stall
        self.interval = min(interval, self.timeout / 4)
        # The call in progress: (start, allowance, step), or None. One tuple,
        # written by the training thread and read by the watchdog's.
        self.current = None
        self.typical = 0.0
        self.steps = 0
        self._thread = None
        self._stop = threading.Event()

    def guard(self, function):
        """`function` (a train function) with each call timed against its deadline."""
        calls = [0]

        def guarded(iterator):
            first = calls[0] == 0
            calls[0] += 1
            self.steps += 1
            start = time.monotonic()
            self.current = (start, self.first_call if first else 0.0, self.steps)
            if self._thread is None:
                self._start()
            try:
                return function(iterator)
            finally:
                self.current = None
                if not first:  # the first call includes tracing: not typical
                    self.typical += 0.1 * ((time.monotonic() - start) - self.typical)

        guarded._hvd_watchdog = self
        return guarded

    def deadline(self, allowance=0.0):
        """Seconds a call may run: the floor, 10x the typical call, or the first call's allowance."""
        return max(self.timeout, TYPICAL_FACTOR * self.typical, allowance)

    def _start(self):
        self._thread = threading.Thread(target=self._watch, name="hvd_keras.watchdog", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _watch(self):
        while not self._stop.wait(self.interval):
            current = self.current
            if current is None:
                continue
            start, allowance, step = current
            waited, deadline = time.monotonic() - start, self.deadline(allowance)
            if waited > deadline:
                self._fire(waited, deadline, step)
                return

    def _fire(self, waited, deadline, step):
        host, rank = self.describe()
        what = f"train step {step}" if isinstance(step, int) else f"collective {step}"
        line = (f"hvd_keras: rank {rank} on host {host}: {what} has not completed after {waited:.0f} s "
                f"(deadline {deadline:.0f} s): a collective waits for a rank or host that does not answer (a host "
                f"or link down, or a rank hung); ending this rank with exit code {STALLED_EXIT_CODE}. HINT: look "
                f"for the host that is down or unreachable; if a rank legitimately works alone for longer inside "
                f"an epoch, raise {VARIABLE} (seconds; 0 turns this off).")
        if self.on_stall is not None:
            self.on_stall(line)
            return
        end_process(line)


def end_process(line, exit_code=STALLED_EXIT_CODE):
    """Prints `line`, ends the launcher's parts on this host that would wait for an unreachable one, and exits."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    finally:
        _tell_launcher()
        _end_openmpi_daemon_later()
        os._exit(exit_code)


def _tell_launcher(environ=None):
    # `hvd-keras run` on this host ends its launcher when it hears this.
    from hvd_keras.cluster import host

    environ = os.environ if environ is None else environ
    target, _, pid = environ.get(LAUNCHER_VARIABLE, "").rpartition(":")
    if target and pid.isdigit() and target == host.identity().key:
        try:
            os.kill(int(pid), signal.SIGUSR2)
        except OSError:
            pass


def _end_openmpi_daemon_later(delay=5.0):
    # A rank on a host other than mpirun's is a child of OpenMPI's daemon
    # there. Where mpirun is reachable the daemon forwards this rank's last
    # line and its exit, and mpirun ends the job (and the daemon). Behind a
    # cut link it would wait for TCP to give up (about 15 minutes): a
    # detached shell ends it a few seconds after this rank, if it is still there.
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/comm") as f:
            name = f.read().strip()
    except OSError:
        return
    if name in _OPENMPI_DAEMONS and "OMPI_COMM_WORLD_RANK" in os.environ:
        try:
            subprocess.Popen(["/bin/sh", "-c", f"sleep {delay:g}; kill -TERM {parent} 2>/dev/null"],
                             start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        except OSError:
            pass


_state = {}


def install(rank, controller, environ=None, timeout=None):
    """Creates this rank's watchdog (None when off); `init()` calls it at size > 1.

    Args:
        timeout: seconds, overriding `HVD_KERAS_STEP_TIMEOUT` (0: off).
    """
    environ = os.environ if environ is None else environ
    seconds = step_timeout(environ, controller) if timeout is None else _checked(timeout)
    old = _state.pop("watchdog", None)
    if old is not None:
        old.stop()
    if seconds == 0:
        return None
    _state["watchdog"] = Watchdog(seconds, first_call_seconds(environ),
                                  describe=lambda: (socket.gethostname(), rank))
    return _state["watchdog"]


def _checked(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < float("inf"):
        raise ValueError(f"step_timeout must be a number of seconds >= 0 (0 turns the watchdog off). Received: "
                         f"step_timeout={timeout!r}. HINT: pass step_timeout=120, or leave it None for "
                         f"{VARIABLE} or the default.")
    return float(timeout)


@contextlib.contextmanager
def timed(label):
    """Times one of hvd_keras's own eager collectives (`label`) against this rank's deadline, like a step.

    Used where every rank arrives together (RankAgreement's epoch-end vote,
    exact metrics at an epoch's end), not after work that one rank does alone.
    """
    watchdog = _state.get("watchdog")
    if watchdog is None:
        yield
        return
    watchdog.current = (time.monotonic(), 0.0, label)
    if watchdog._thread is None:
        watchdog._start()
    try:
        yield
    finally:
        watchdog.current = None


def guard(function):
    """`function` timed by this rank's watchdog; unchanged when there is none (size 1, or turned off)."""
    watchdog = _state.get("watchdog")
    if watchdog is None or getattr(function, "_hvd_watchdog", None) is watchdog:
        return function
    return watchdog.guard(function)
