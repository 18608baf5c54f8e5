"""Cluster environments: where the processes of a job run."""

from hvd_keras.cluster.hostlist import expand_hostlist, expand_tasks_per_node
from hvd_keras.cluster.job import job_size, launcher_ranks
from hvd_keras.cluster.slurm import SLURMEnvironment

__all__ = ["SLURMEnvironment", "expand_hostlist", "expand_tasks_per_node", "job_size", "launcher_ranks"]
