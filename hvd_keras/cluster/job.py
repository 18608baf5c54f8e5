"""How many processes this process's launcher started, read from the launcher's variables.

`hvd_keras.init()` chooses Horovod's settings before Horovod starts, so it
cannot ask Horovod for the size: each launcher tells its processes in
variables of its own. A process with none of them, outside an srun step of
several tasks, was started on its own (`python train.py`, also in a Slurm
batch script): Horovod runs it as a job of one.
"""

import os

# (rank variable, size variable) per launcher, in the order they are read;
# None: the launcher exports no size.
LAUNCHERS = (
    ("HOROVOD_RANK", "HOROVOD_SIZE"),                  # horovodrun --gloo
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # OpenMPI's mpirun, horovodrun --mpi
    ("PMI_RANK", "PMI_SIZE"),                          # MPICH and Intel MPI (Hydra), srun --mpi=pmi2
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),    # MVAPICH2
    ("JSM_NAMESPACE_RANK", "JSM_NAMESPACE_SIZE"),      # IBM jsrun
    ("PMIX_RANK", "SLURM_STEP_NUM_TASKS"),             # srun --mpi=pmix: PMIx exports no size
    ("PALS_RANKID", None),                             # Cray PALS (aprun, mpiexec on Shasta)
)
# Set in every task of an srun step. Without a rank variable above, the
# tasks may still form one MPI job (srun with Slurm's own PMI library, as
# Intel MPI uses it), so more than one task is "cannot tell".
STEP_TASKS = "SLURM_STEP_NUM_TASKS"


def _count(value):
    value = (value or "").strip()
    return int(value) if value.isdecimal() and int(value) > 0 else None


def job_size(environ=None):
    """The number of processes in this process's launch: 1 when no launcher started it, None if unknown.

    Example:

    ```python
    job_size({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "8"})  # 8
    job_size({})  # 1: `python train.py`
    ```
    """
    environ = os.environ if environ is None else environ
    for rank_var, size_var in LAUNCHERS:
        if rank_var in environ:
            return _count(environ.get(size_var)) if size_var else None
    if STEP_TASKS in environ:
        return 1 if _count(environ[STEP_TASKS]) == 1 else None
    return 1


# (local rank, local size) per launcher.
LOCAL_VARIABLES = (
    ("HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE"),                  # horovodrun --gloo
    ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),  # OpenMPI, horovodrun --mpi
    ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),                        # MPICH and Intel MPI (Hydra)
    ("MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),    # MVAPICH2
)


def launcher_ranks(environ=None):
    """(rank, local rank, local size) as this process's launcher gave them, or None where it did not.

    `hvd_keras.init()` pins the GPU with them before Horovod starts, so that
    neither Horovod nor NCCL ever touches another process's GPU; srun's
    tasks take theirs from `SLURM_PROCID`, `SLURM_LOCALID` and the step's
    tasks on this node.

    Example:

    ```python
    launcher_ranks({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                    "OMPI_COMM_WORLD_LOCAL_SIZE": "4"})  # (5, 1, 4)
    ```
    """
    environ = os.environ if environ is None else environ
    rank = next((environ[r] for r, _ in LAUNCHERS if r in environ), None)
    for local_var, size_var in LOCAL_VARIABLES:
        if local_var in environ and size_var in environ:
            values = (rank, environ[local_var], environ[size_var])
            break
    else:
        if "SLURM_LOCALID" not in environ or "SLURM_STEP_TASKS_PER_NODE" not in environ:
            return None
        from hvd_keras.cluster.hostlist import expand_tasks_per_node

        try:
            per_node = expand_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
            size = per_node[int(environ.get("SLURM_NODEID", "0"))]
        except (ValueError, IndexError):
            return None
        values = (rank if rank is not None else environ.get("SLURM_PROCID"), environ["SLURM_LOCALID"], str(size))
    if not all(v is not None and str(v).strip().isdecimal() for v in values):
        return None
    rank, local, size = (int(v) for v in values)
    return (rank, local, size) if 0 <= local < size else None
