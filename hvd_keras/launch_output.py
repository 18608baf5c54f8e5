"""The launcher's output passed through, with the host of the rank that failed first named.

When a rank ends, horovodrun's Gloo launcher names it only by number ("The
first process to do so was: Process name: 1, Exit code: 137"); on several
hosts the user then has to work out where rank 1 ran. `hvd-keras run` knows
how it placed the ranks, and adds one line naming the rank and its host.
mpirun and srun name both themselves.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

_PROCESS = re.compile(r"^Process name: (\d+)\s*$")
# Lines that say a rank failed, after which the launcher should end at once.
_FAILED = re.compile(r"hvd_keras: rank \d+ on host .*: train step|ORTE has lost communication|"
                     r"mpirun noticed that process rank|Horovod detected that one or more processes exited")
#: Seconds the launcher has to end after a rank failed before hvd-keras ends it.
GRACE_SECONDS = 10.0
_EXIT = re.compile(r"^Exit code: (-?\d+)\s*$")


def rank_hosts(placed):
    """[(host, n), ...] as the launcher fills hosts in order -> {rank: host}."""
    hosts, rank = {}, 0
    for host, n in placed:
        for _ in range(n):
            hosts[rank] = host
            rank += 1
    return hosts


class FailureNamer:
    """Reads the launcher's lines and returns the line to add when one reports the first failed rank."""

    def __init__(self, hosts):
        self.hosts = hosts
        self.rank = None

    def feed(self, line):
        match = _PROCESS.match(line)
        if match:
            self.rank = int(match.group(1))
            return None
        match = _EXIT.match(line)
        if match and self.rank is not None:
            rank, self.rank = self.rank, None
            host = self.hosts.get(rank, "an unknown host")
            return (f"hvd-keras: rank {rank} on host {host} ended first (exit code {match.group(1)}); the launcher "
                    "ended the other ranks. HINT: its own lines above, prefixed [" + str(rank) + "], say why.")
        return None


def run(cmd, env, hosts, grace=GRACE_SECONDS):
    """Runs the launcher, forwarding its stdout and stderr; returns its exit code.

    Once a line says that a rank failed, the launcher has `grace` seconds to
    end the job; mpirun can wait much longer for the daemon of a host it no
    longer reaches (a cut link), so then it is ended, with everything it
    started on this host. The ranks beyond the link end by their own
    watchdog (hvd_keras.watchdog).
    """
    from hvd_keras.cluster import host

    # A rank on this host whose watchdog fires tells this process (SIGUSR2).
    env = dict(env, HVD_KERAS_LAUNCHER=f"{host.identity().key}:{os.getpid()}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1, start_new_session=True)
    namer = FailureNamer(hosts)
    failed = threading.Event()
    # The launcher runs in a session of its own (so that it can be ended with
    # what it started): the signals a scheduler sends this process (SIGTERM,
    # SIGUSR1 before preemption) and Ctrl-C are passed on to it.
    previous = {sig: signal.signal(sig, lambda s, _: _signal_group(proc, s))
                for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, lambda *_: failed.set())

    def forward(stream, out):
        for line in stream:
            out.write(line)
            out.flush()
            added = namer.feed(line.rstrip("\n"))
            if added:
                sys.stderr.write(added + "\n")
                sys.stderr.flush()
            if _FAILED.search(line):
                failed.set()

    threads = [threading.Thread(target=forward, args=(proc.stdout, sys.stdout), daemon=True),
               threading.Thread(target=forward, args=(proc.stderr, sys.stderr), daemon=True)]
    for t in threads:
        t.start()
    try:
        while proc.poll() is None:
            if failed.wait(0.5):
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    sys.stderr.write(f"hvd-keras: the launcher had not ended {grace:.0f} s after a rank failed (it "
                                     "waits for a host it cannot reach); ending it.\n")
                    sys.stderr.flush()
                    _end_group(proc)
                break
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for t in threads:
        t.join(timeout=5)
    return code


def _end_group(proc):
    """SIGTERM, then SIGKILL after 3 s, to the launcher and every process on this host it left behind.

    Found by what they hold, not by group or descent: horovodrun starts
    mpirun in a group of its own, and a process whose parent died is
    adopted by init; every one of them still holds the launcher's output pipes.
    """
    pipes = {f"pipe:[{os.fstat(stream.fileno()).st_ino}]" for stream in (proc.stdout, proc.stderr)}
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        holders = {proc.pid} | _holding(pipes)
        holders.discard(os.getpid())
        for pid in holders:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (proc.poll() is None or _holding(pipes) - {os.getpid()}):
            time.sleep(0.1)
        if proc.poll() is not None and not _holding(pipes) - {os.getpid()}:
            return


def _holding(pipes):
    """Process ids with one of `pipes` open (Linux's /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in pipes:
                    found.add(int(entry))
                    break
        except OSError:
            continue
    return found


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass
