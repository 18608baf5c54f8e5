"""Scheduling of the threads Horovod starts: on CPU ranks they run only on cores the rank leaves idle.

Horovod negotiates in threads of its own (its background thread, Gloo's
event loop, OpenMPI's progress threads), and it negotiates with the other
ranks every cycle, queued tensors or not. On a CPU rank those threads share
the cores with the rank's compute. Each wake-up takes the core from the
compute; and under Linux's default scheduler a thread woken by a message may
wait for the running one's slice, so every hand-off between Horovod's
threads and the rank's own costs latency. Scheduled `SCHED_IDLE`, Horovod's
threads run when the rank's threads leave a core free, as they do while
the rank waits for a collective, and a woken compute thread takes the core
back at once. Measured (2 ranks, `bench/settings.py`): see the
README, "Against the peers".

`SCHED_IDLE` is not starvation: such a thread still gets a small share of a
busy core, so Horovod's and Gloo's timeouts hold while one rank computes
alone (tests/test_launch_settings.py). On GPUs the compute is on the GPU and
Horovod's threads launch its collectives: they keep the normal policy.

The policy comes from `HVD_KERAS_HOROVOD_THREADS` (`idle` or `normal`),
which `hvd_keras.init()` sets, unless set, by the devices it sees
(`launcher.recommended_env`). It reaches the threads that Horovod's own
initialisation starts: under `init(comm=...)` MPI was started earlier, and
OpenMPI's threads keep their policy.
"""

import os

VARIABLE = "HVD_KERAS_HOROVOD_THREADS"
POLICIES = ("idle", "normal")


def policy(environ=None):
    """The policy `environ` asks for: "idle", "normal", or None when unset."""
    environ = os.environ if environ is None else environ
    value = environ.get(VARIABLE)
    if value is None:
        return None
    if value not in POLICIES:
        raise ValueError(
            f"{VARIABLE} must be one of {', '.join(POLICIES)}. Received: {VARIABLE}={value!r}. "
            f"HINT: unset it for hvd_keras's choice (idle on CPUs, normal on GPUs)."
        )
    return value


def threads():
    """The ids of this process's threads (an empty set where /proc is missing)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def started_by_horovod(before):
    """The threads started since `before` (a `threads()` set) that are not Python's own.

    `hvd.init()` starts Horovod's background thread, which starts its
    controller's (Gloo's event loop, OpenMPI's progress threads) before
    `init` returns; threads they start later inherit the policy. A Python
    thread another thread started meanwhile is left alone.
    """
    import threading

    python = {t.native_id for t in threading.enumerate()}
    return threads() - before - python


def apply(tids, policy_):
    """Schedules the threads `tids` under `policy_`; returns how many it changed.

    A thread that ended meanwhile is skipped; on a system without
    `SCHED_IDLE` nothing changes.
    """
    if policy_ != "idle" or not hasattr(os, "SCHED_IDLE"):
        return 0
    changed = 0
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            changed += 1
        except OSError:  # ended meanwhile, or a sandbox that refuses the call
            pass
    return changed
