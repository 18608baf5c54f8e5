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
