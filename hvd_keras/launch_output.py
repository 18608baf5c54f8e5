"""The launcher's output passed through, with the host of the rank that failed first named.

When a rank ends, horovodrun's Gloo launcher names it only by number ("The
first process to do so was: Process name: 1, Exit code: 137"); on several
hosts the user then has to work out where rank 1 ran. `hvd-keras run` knows
how it placed the ranks, and adds one line naming the rank and its host.
mpirun and srun name both themselves.
"""

import re
import subprocess
import sys
import threading

_PROCESS = re.compile(r"^Process name: (\d+)\s*$")
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


def run(cmd, env, hosts):
    """Runs the launcher, forwarding its stdout and stderr; returns its exit code."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1)
    namer = FailureNamer(hosts)

    def forward(stream, out):
        for line in stream:
            out.write(line)
            out.flush()
            added = namer.feed(line.rstrip("\n"))
            if added:
                sys.stderr.write(added + "\n")
                sys.stderr.flush()

    threads = [threading.Thread(target=forward, args=(proc.stdout, sys.stdout), daemon=True),
               threading.Thread(target=forward, args=(proc.stderr, sys.stderr), daemon=True)]
    for t in threads:
        t.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    for t in threads:
        t.join(timeout=5)
    return code
