"""Process-level state: Horovod initialisation, ranks and a barrier."""

import os
import sys

from hvd_keras import placement, scheduling, watchdog
from hvd_keras.cluster import host, job_size, launcher_ranks
from hvd_keras.launcher import check_elastic_env, recommended_env
from hvd_keras._horovod import hvd, tf

_state = {}


def elastic_launch(environ=None):
    """True in a process that horovodrun started in elastic mode (`--min-np`, `--host-discovery-script`)."""
    return (os.environ if environ is None else environ).get("HOROVOD_ELASTIC") == "1"


def init(comm=None, step_timeout=None):
    """Initialises Horovod and pins this process to its GPU. Idempotent.

    On a machine with GPUs each process takes one GPU, with memory growth
    on, so that N processes on a node share N GPUs instead of all
    allocating GPU 0: the GPU at index `local_rank()` when every process
    sees all GPUs (`horovodrun -np 8` on an 8-GPU node), or the first of its
    own when the launcher gave each task its own (`srun --gpus-per-task=1`).
    Two processes of a host that would use the same GPU (more processes
    than GPUs) are an error on every rank, never a silent share. On CPU there
    is nothing to pin; there the threads Horovod starts are scheduled to run
    on the cores the rank's compute leaves idle (`hvd_keras.scheduling`).
    Horovod's settings for the job (`launcher.recommended_env`) are applied
    first, except those you set yourself.

    Call it before building any model (TensorFlow fixes its visible devices
    the first time it touches a GPU).

    Args:
        comm: an mpi4py communicator (or a list of ranks) to run Horovod on,
            as `horovod.init(comm=...)` takes: hvd_keras then runs inside an
            existing MPI program, or on a sub-communicator. Needs the MPI
            controller (`mpirun`, `horovodrun --mpi`). Default: all processes
            of the launch. MPI was started before this call, so OpenMPI's
            settings can no longer be applied here: export
            `OMPI_MCA_mpi_yield_when_idle=1` in the job script (rank 0 says
            so when it is missing), and OpenMPI's own threads keep their
            scheduling policy.
        step_timeout: seconds a train step may run before this rank ends
            with one line naming its host and rank (`hvd_keras.watchdog`):
            a host or link that went down leaves MPI and NCCL collectives
            waiting forever. Default: `HVD_KERAS_STEP_TIMEOUT`, else 30 s
            (60 s under Gloo, whose own 30 s timeout comes first); 0 turns
            it off. Not used at size 1.

    Example:

    ```python
    import hvd_keras

    hvd_keras.init()
    print(f"rank {hvd_keras.rank()} of {hvd_keras.size()}")
    ```
    """
    if hvd.is_initialized() and "placement" in _state:
        return
    # Horovod and OpenMPI read these when `hvd.init()` starts them; the
    # user's own values win. Among them: a rank that never reaches a
    # collective (a bug, a rank-only branch) would leave the others waiting
    # forever, so Horovod names the missing ranks after a minute and shuts
    # the job down instead of hanging.
    # mpi4py (init(comm=...), or imported by the user's script) started MPI
    # already: OpenMPI has read its settings, and setting them now is too late.
    mpi_started_without_yield = _MPI_YIELD not in os.environ and _open_mpi_running()
    gpus = bool(tf.config.list_physical_devices("GPU"))
    check_horovod_build(gpus, nccl=bool(hvd.nccl_built()), mpi=hvd.mpi_built(), gloo=hvd.gloo_built())
    elastic = elastic_launch()  # horovodrun's elastic mode: Horovod restarts at resets
    apply_recommended_env(os.environ, gpus=gpus, np=job_size() if comm is None else _comm_size(comm), elastic=elastic)
    if elastic:
        check_elastic_env(os.environ)
    threads_policy = scheduling.policy()  # a bad value fails here, before Horovod starts
    if step_timeout is None:
        watchdog.step_timeout()  # so does a bad HVD_KERAS_STEP_TIMEOUT
    else:
        watchdog._checked(step_timeout)
    # The GPU is pinned before Horovod starts where the launcher says which
    # local rank this is, so that Horovod and NCCL never touch another GPU.
    early = launcher_ranks() if gpus and not hvd.is_initialized() and comm is None else None
    if early is not None:
        _state["placement"] = pin_gpu(tf.config, host.identity(), *early)
    if not hvd.is_initialized():
        before = scheduling.threads()
        hvd.init() if comm is None else hvd.init(comm=comm)
        scheduling.apply(scheduling.started_by_horovod(before), threads_policy)
    if mpi_started_without_yield and hvd.rank() == 0:
        print(f"hvd_keras: mpi4py started MPI before hvd_keras.init() without {_MPI_YIELD}=1, so OpenMPI busy-polls in "
              "Horovod's thread and takes the core from the rank's compute. HINT: export "
              f"{_MPI_YIELD}=1 in the job script, before Python starts MPI.", file=sys.stderr, flush=True)
    # No collective here: it would run a TensorFlow op and so freeze
    # TensorFlow's configuration (threads, devices) before the user's script
    # sets it. The placements are compared in the first collective hvd_keras
    # runs anyway (broadcast.check_same_structure, before the first step).
    if hvd.size() > 1:
        watchdog.install(hvd.rank(), "gloo" if hvd.gloo_enabled() else "mpi", timeout=step_timeout)
    # Grouped by host identity, not hostname: two hosts may share a name.
    if early is None:
        _state["placement"] = pin_gpu(tf.config, host.identity(), hvd.rank(), hvd.local_rank(), hvd.local_size())
    elif early != (hvd.rank(), hvd.local_rank(), hvd.local_size()):
        raise RuntimeError(
            f"hvd_keras.init(): the launcher's variables say rank {early[0]}, local rank {early[1]} of "
            f"{early[2]}, but Horovod says rank {hvd.rank()}, local rank {hvd.local_rank()} of {hvd.local_size()}, "
            "so this process may have taken another's GPU. HINT: launch with one launcher (horovodrun, mpirun "
            "or srun), not one inside another, or unset the other launcher's variables.")


_MPI_YIELD = "OMPI_MCA_mpi_yield_when_idle"
_REQUIRE_NCCL = "HVD_KERAS_REQUIRE_NCCL"


def check_horovod_build(gpus, nccl, mpi, gloo, environ=None):
    """Raises, in one line naming the fix, when horovod lacks what this machine needs.

    A horovod without NCCL still runs on GPUs, through host copies and
    MPI or Gloo, many times slower: an error, unless `HVD_KERAS_REQUIRE_NCCL=0`.
    """
    environ = os.environ if environ is None else environ
    if not (mpi or gloo):
        raise RuntimeError("horovod was built without a controller (neither MPI nor Gloo), so no process can reach "
                           "another. HINT: run `hvd-keras build-horovod` in this environment.")
    if gpus and not nccl and environ.get(_REQUIRE_NCCL, "1") != "0":
        raise RuntimeError("TensorFlow sees GPUs but horovod was built without NCCL: gradients would cross host "
                           "memory, many times slower. HINT: run `hvd-keras build-horovod --gpu` in this "
                           f"environment, or set {_REQUIRE_NCCL}=0 to train without NCCL.")


def _open_mpi_running():
    """Whether the MPI that mpi4py started is Open MPI (whose settings come from OMPI_MCA_ variables)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and mpi.get_vendor()[0] == "Open MPI"


def _comm_size(comm):
    """The size of the job `init(comm=...)` runs on: an mpi4py communicator or a list of ranks."""
    if hasattr(comm, "Get_size"):
        return comm.Get_size()
    try:
        return len(comm)
    except TypeError:
        return None


def apply_recommended_env(environ, gpus, np=None, elastic=False):
    """Sets each of `launcher.recommended_env(gpus, np, elastic)` in `environ` that is not set there yet."""
    for key, value in recommended_env(gpus, np, elastic).items():
        environ.setdefault(key, value)


def this_placement():
    """This process's GPU `Placement` chosen by `init()`."""
    _ensure_init()
    return _state["placement"]


def pin_gpu(config, host, rank, local_rank, local_size, environ=None, listing=None):
    """Makes one GPU visible to this process (see `init`); returns its `Placement`.

    Args:
        config: `tf.config` (a stand-in in unit tests).
        listing: nvidia-smi's `index, uuid` lines (default: asked when there are GPUs).
    """
    environ = os.environ if environ is None else environ
    gpus = config.list_physical_devices("GPU")
    if gpus and listing is None:
        listing = placement.nvidia_smi_uuids()
    mine = placement.choose(host, rank, local_rank, local_size, len(gpus),
                            environ.get("CUDA_VISIBLE_DEVICES"), listing)
    if mine.index is None:
        return mine
    gpu = gpus[mine.index]
    if config.get_visible_devices("GPU") == [gpu]:
        return mine  # already pinned (a second init after hvd.shutdown, or the user did it)
    try:
        config.experimental.set_memory_growth(gpu, True)
        config.set_visible_devices(gpu, "GPU")
    except RuntimeError as e:
        raise RuntimeError(
            f"hvd_keras.init() could not pin rank {rank} to {gpu.name}: TensorFlow already "
            f"initialised its GPUs ({e}). HINT: call hvd_keras.init() at the top of the script, "
            "before building a model or running any TensorFlow op."
        ) from None
    return mine


def _ensure_init():
    if "placement" not in _state:
        init()


def rank():
    """Global rank of this process, from 0 to `size() - 1`."""
    _ensure_init()
    return hvd.rank()


def size():
    """Number of processes in the job."""
    _ensure_init()
    return hvd.size()


def local_rank():
    """Rank of this process among the processes on its node."""
    _ensure_init()
    return hvd.local_rank()


def local_size():
    """Number of processes on this node."""
    _ensure_init()
    return hvd.local_size()


def is_chief():
    """True on rank 0, the process that writes files and prints."""
    return rank() == 0


def barrier(name="hvd_keras.barrier"):
    """Blocks until every rank has reached this call. A no-op at size 1.

    Horovod's TensorFlow layer has no barrier; an allreduce of one scalar is
    one. Every rank must call it: never call it inside a rank branch.
    """
    if size() > 1:
        hvd.allreduce(tf.zeros([]), op=hvd.Sum, name=name)


def reinit():
    """Starts Horovod again with the rank and size the launcher gives now; Horovod's elastic reset.

    Horovod's elastic reset (`shutdown(); init()`) gives this process a new
    rank and size. hvd_keras's own per-process state (the GPU placement, the
    watchdog's rank) is made again for them; the GPU stays the same, since an
    elastic worker keeps its slot on its host. Every rank of the new job
    calls it (`hvd_keras.elastic`).
    """
    hvd.shutdown()
    _state.pop("placement", None)
    init()
