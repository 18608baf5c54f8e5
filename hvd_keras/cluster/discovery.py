"""Host discovery for an elastic job inside a Slurm allocation: the allocation's nodes that Slurm still offers.

horovodrun's elastic driver runs a discovery command every second and
treats a host that leaves its output as removed (its workers are stopped,
the others go on) and one that appears as added. In a Slurm job started
with `--no-kill`, a node that fails, or that an administrator drains, stays
in `SLURM_JOB_NODELIST` but Slurm reports its state: such a node is left
out here, so the job shrinks onto the nodes that remain instead of failing.

`hvd-keras discover-hosts` prints the result, one `host:slots` per line;
`hvd-keras run --elastic` inside an allocation uses it when no
`--discovery-script` is given.
"""

import shutil
import subprocess
import sys

from hvd_keras.cluster.slurm import NODELIST, SLURMEnvironment

# Base states of `sinfo -o %T` in which a node runs a job's processes. Any
# other (down, drained, draining, fail, failing, maint, reboot, power_down,
# future, unknown, ...) or a flag (`*` not responding, `~` powered off, `#`
# powering up, `!` pending power down, `%` powering down, `$` maintenance,
# `@` pending reboot, `^` rebooting, `-` planned by the backfill scheduler)
# other than `-` and `+` (completing) leaves the node out.
USABLE_STATES = ("allocated", "mixed", "idle", "completing", "planned", "reserved")
_HARMLESS_FLAGS = "-+"


def usable_nodes(sinfo_text):
    """The nodes of `sinfo -h -N -o "%N %T"` output whose state is usable (a node listed twice must be so twice)."""
    states = {}
    for line in sinfo_text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        node, state = fields[0], fields[1].lower()
        base = state.rstrip("*~#!%$@^-+")
        ok = base in USABLE_STATES and all(flag in _HARMLESS_FLAGS for flag in state[len(base):])
        states[node] = states.get(node, True) and ok
    return {node for node, ok in states.items() if ok}


def slurm_hosts(environ=None, sinfo_text=None):
    """[(host, slots)] of this Slurm allocation that Slurm still offers, in the allocation's order.

    Args:
        environ: the environment to read (defaults to `os.environ`).
        sinfo_text: `sinfo`'s output for the allocation's nodes; default: run
            `sinfo`. When it cannot run, every node of the allocation is kept
            (a slurmctld that does not answer for a moment must not shrink the job).
    """
    env = SLURMEnvironment(environ)
    if not env.detect():
        raise RuntimeError("no Slurm allocation (SLURM_JOB_ID is unset). HINT: run it inside sbatch/salloc, or "
                           "give hvd-keras run --elastic a --discovery-script of your own.")
    hosts = env.hosts()
    if sinfo_text is None:
        sinfo_text = _sinfo(env.environ[NODELIST])
    if sinfo_text is None:
        return hosts
    usable = usable_nodes(sinfo_text)
    return [(host, slots) for host, slots in hosts if host in usable]


def _sinfo(nodelist):
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-n", nodelist, "-o", "%N %T"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        lines = [line for line in out.stderr.splitlines() if line.strip()] or [f"exit code {out.returncode}"]
        print(f"hvd-keras discover-hosts: sinfo failed ({lines[0][:200]}); keeping every node of the allocation",
              file=sys.stderr)
        return None
    return out.stdout


def main(environ=None):
    """Prints `host:slots` lines for horovodrun's `--host-discovery-script`; returns the exit code."""
    try:
        hosts = slurm_hosts(environ)
    except RuntimeError as e:
        print(f"hvd-keras discover-hosts: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{host}:{slots}\n" for host, slots in hosts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
