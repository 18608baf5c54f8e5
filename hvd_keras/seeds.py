"""Random seeds across ranks: one seed for the whole job where data code shuffles, one stream per rank for masks.

Two kinds of randomness must be treated oppositely on several ranks:

- Data code that runs before sharding (`np.random.permutation`, an unseeded
  `Dataset.shuffle`, `validation_split` after a shuffle) must draw the same
  numbers on every rank, or the shards overlap: samples trained twice per
  epoch, others never, validation samples trained on. `agree_global_seed`
  seeds Python, NumPy, TensorFlow and Keras alike on every rank of a job,
  from a value the launcher gives every rank (so no collective runs at
  import, which would freeze TensorFlow's configuration before the script
  sets it); each job gets another seed, as an unseeded run would.
- Dropout and augmentation masks must differ between ranks, or every rank
  drops the same units of its own samples. After a broadcast has made every
  rank equal (`broadcast_state`: the initial state, a resume), each rank's
  seed-generator states are moved to a stream of its own, derived from rank
  0's state and the rank, so a resumed run draws what the uninterrupted
  run would have drawn.
"""

import hashlib
import os

import numpy as np

from hvd_keras import _compat
from hvd_keras._horovod import hvd, keras

# Variables every launcher gives all ranks of one job alike, and another job
# differently: horovodrun's Gloo rendezvous, Open MPI's job, PMIx's namespace,
# Slurm's job step, MPICH's PMI port.
JOB_VARIABLES = ("HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_GLOO_RENDEZVOUS_PORT", "OMPI_MCA_orte_hnp_uri",
                 "OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "SLURM_JOB_ID", "SLURM_STEP_ID", "PMI_PORT")
# Odd and large: rank r's stream starts r of these away from rank 0's seed.
_STRIDE = 0x9E3779B1


def job_seed(environ=None):
    """A seed that every rank of this job computes alike from the launcher's variables, or None."""
    environ = os.environ if environ is None else environ
    found = [f"{name}={environ[name]}" for name in JOB_VARIABLES if environ.get(name)]
    if not found:
        return None
    return int(hashlib.sha256("\n".join(found).encode()).hexdigest()[:8], 16) % (2 ** 31)


def agree_global_seed(size, environ=None):
    """Seeds Python, NumPy, TensorFlow and Keras with one job-wide value on every rank; returns it.

    Where no launcher variable is known, rank 0's random value is broadcast
    (a collective, so TensorFlow starts here).
    """
    seed = job_seed(environ)
    if seed is None:
        seed = int(hvd.broadcast_object(int(np.random.SeedSequence().entropy % (2 ** 31)), root_rank=0,
                                        name="hvd_keras.job_seed")) if size > 1 else None
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return seed


def per_rank_seed_states(variables, rank):
    """Moves the seed-generator states among `variables` to rank `rank`'s own stream (rank 0 keeps its own)."""
    if rank == 0:
        return
    for variable in variables:
        if _compat.is_seed_state(variable):
            value = np.array(variable.numpy())
            value[0] = (int(value[0]) + rank * _STRIDE) % (2 ** 31)
            variable.assign(value)
