"""GPU placement: which GPU each process takes, and the checks that no two processes share one.

Pure functions (no TensorFlow), so the decision is tested with patched
device lists and used by both `init()` and `hvd-keras run --gpus`.

The rule, for a process that sees `count` GPUs with `local_size` processes
on its host:

- `count >= local_size`: it takes the GPU at index `local_rank` of what it
  sees. This is `horovodrun -np 8` on an 8-GPU node, every process seeing
  all GPUs.
- `count < local_size`: it takes index 0, assuming that the launcher gave
  each task GPUs of its own (Slurm's `--gpus-per-task=1` or `--gpu-bind`,
  which set a different `CUDA_VISIBLE_DEVICES` per task). `check_distinct`
  then proves that assumption across the host's processes: two processes
  that would use the same GPU are an error naming them, never a silent share.
"""

import dataclasses
import os


class PlacementError(RuntimeError):
    """Processes would share a GPU; the message names them and the fix."""


@dataclasses.dataclass(frozen=True)
class Placement:
    host: str
    rank: int
    local_rank: int
    local_size: int
    count: int           # GPUs this process sees
    visible: str = None  # its CUDA_VISIBLE_DEVICES, None when unset
    index: int = None    # index into its visible GPUs, None on CPU
    uuid: str = None     # the physical GPU taken (nvidia-smi's UUID), None where it cannot be told

    @property
    def device(self):
        """A name for the physical GPU taken, comparable between processes of one host."""
        if self.index is None:
            return None
        if self.uuid is not None:
            return self.uuid
        if self.visible is None:
            return str(self.index)
        return _visible_list(self.visible)[self.index]


def _visible_list(visible):
    return [v.strip() for v in visible.split(",") if v.strip()]


def choose(host, rank, local_rank, local_size, count, visible=None, listing=None):
    """This process's placement: which of its visible GPUs it takes (index), if any.

    Args:
        listing: `nvidia-smi --query-gpu=index,uuid --format=csv,noheader`
            as this process sees it, to name the physical GPU taken.
    """
    if count == 0:
        index = None
    elif count >= local_size:
        index = local_rank
    else:
        index = 0
    uuid = None if index is None else physical_gpu(visible, index, listing)
    return Placement(host=host, rank=rank, local_rank=local_rank, local_size=local_size,
                     count=count, visible=visible, index=index, uuid=uuid)


def physical_gpu(visible, index, listing):
    """The UUID of the GPU at `index` of those this process sees, or None where it cannot be told.

    `CUDA_VISIBLE_DEVICES` may name GPUs by UUID (taken as given) or by
    index. Sites that confine each task to its own GPU (Slurm's cgroups)
    give every task `CUDA_VISIBLE_DEVICES=0`, and there nvidia-smi lists
    that one GPU only: the index is a position in what nvidia-smi lists.
    Otherwise the index is nvidia-smi's own (PCI order, CUDA's order on
    nodes of one GPU model).
    """
    entries = None if visible is None else _visible_list(visible)
    if entries is not None and entries[index].startswith(("GPU-", "MIG-")):
        return entries[index]
    rows = [[field.strip() for field in line.split(",")] for line in (listing or "").splitlines() if "," in line]
    if not rows:
        return None
    if entries is None or len(rows) == len(entries):
        return rows[index][1] if index < len(rows) else None
    return next((uuid for number, uuid, *_ in rows if number == entries[index]), None)


def check_distinct(placements):
    """Raises PlacementError when two processes on one host would use the same GPU.

    Every rank calls it with everyone's placements and so raises the same
    error. GPUs named in different forms (indices against UUIDs, or
    `CUDA_VISIBLE_DEVICES` set for some processes and not others) cannot be
    compared and are not.
    """
    by_host = {}
    for p in placements:
        if p.device is not None:
            by_host.setdefault(p.host, []).append(p)
    for host, group in sorted(by_host.items()):
        # Physical GPUs (UUIDs) compare everywhere; names in different forms do not.
        forms = {"uuid"} if all(p.uuid for p in group) else {p.visible is None for p in group}
        if len(forms) > 1:
            continue
        seen = {}
        for p in sorted(group, key=lambda p: p.rank):
            if p.device in seen:
                other = seen[p.device]
                raise PlacementError(
                    f"hvd_keras: ranks {other.rank} and {p.rank} on host {host} would share GPU "
                    f"{p.device}: {p.local_size} processes run there but rank {p.rank} sees only "
                    f"{p.count} GPU(s) (CUDA_VISIBLE_DEVICES={p.visible if p.visible is not None else 'unset'}). "
                    f"HINT: start at most {p.count} processes per host (-np, --ntasks-per-node), or "
                    "give each task its own GPU (srun --gpus-per-task=1)."
                )
            seen[p.device] = p


def visible_gpu_count(environ=None, list_gpus=None):
    """GPUs a process started here would see: `CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`.

    Returns None when it cannot tell (no `nvidia-smi`, no variable).
    """
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return 0 if visible.strip() in ("", "-1", "NoDevFiles") else len(_visible_list(visible))
    listing = _nvidia_smi_list() if list_gpus is None else list_gpus()
    if listing is None:
        return None
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def nvidia_smi_uuids():
    """nvidia-smi's `index, uuid` lines as this process sees them, or None without nvidia-smi."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _nvidia_smi_list():
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None
