"""The Slurm environment: hosts, slots and ranks from Slurm's variables."""

import os
import shutil
import subprocess

from hvd_keras.cluster.hostlist import expand_hostlist, expand_tasks_per_node

# Every variable this class reads, in one place.
JOB_ID = "SLURM_JOB_ID"
NODELIST = "SLURM_JOB_NODELIST"
TASKS_PER_NODE = "SLURM_TASKS_PER_NODE"
NTASKS = "SLURM_NTASKS"
PROCID = "SLURM_PROCID"
LOCALID = "SLURM_LOCALID"
NODEID = "SLURM_NODEID"


class SLURMEnvironment:
    """The Slurm allocation this process runs in.

    Args:
        environ: the environment to read (defaults to `os.environ`).
        use_scontrol: expand node lists with `scontrol show hostnames` when it
            is installed, and with hvd_keras's own parser otherwise.

    Example:

    ```python
    env = SLURMEnvironment()
    if env.detect():
        print(env.hosts())  # [('node001', 4), ('node002', 4)]
    ```
    """

    def __init__(self, environ=None, use_scontrol=True):
        self.environ = os.environ if environ is None else environ
        self.use_scontrol = use_scontrol

    def detect(self):
        return JOB_ID in self.environ

    def _require(self, name):
        if name not in self.environ:
            raise RuntimeError(
                f"{name} is not set inside the Slurm allocation {self.environ.get(JOB_ID, '?')}. "
                "HINT: start the job with sbatch/salloc with --ntasks (and --ntasks-per-node) set."
            )
        return self.environ[name]

    def nodes(self):
        text = self._require(NODELIST)
        if self.use_scontrol and shutil.which("scontrol"):
            out = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0:
                return out.stdout.split()
        return expand_hostlist(text)

    def hosts(self):
        """[(host, slots)] of the allocation, in Slurm's order."""
        try:
            nodes = self.nodes()
            slots = expand_tasks_per_node(self._require(TASKS_PER_NODE))
        except ValueError as e:
            raise RuntimeError(
                f"cannot read the Slurm allocation {self.environ.get(JOB_ID, '?')}: {e}. Received: "
                f"{NODELIST}={self.environ.get(NODELIST)!r}, {TASKS_PER_NODE}={self.environ.get(TASKS_PER_NODE)!r}. "
                "HINT: run inside sbatch/salloc, or pass -H host:slots (or --no-slurm) to ignore Slurm's variables."
            ) from None
        if len(slots) != len(nodes):
            raise RuntimeError(
                f"Slurm lists {len(nodes)} nodes ({self.environ[NODELIST]}) but tasks for {len(slots)} "
                f"({self.environ[TASKS_PER_NODE]}). HINT: pass --ntasks-per-node with --ntasks."
            )
        return list(zip(nodes, slots))

    def world_size(self):
        if NTASKS in self.environ:
            return int(self.environ[NTASKS])
        return sum(s for _, s in self.hosts())

    def global_rank(self):
        return int(self.environ.get(PROCID, 0))

    def local_rank(self):
        return int(self.environ.get(LOCALID, 0))

    def node_rank(self):
        return int(self.environ.get(NODEID, 0))

    @property
    def main_address(self):
        return self.nodes()[0]
