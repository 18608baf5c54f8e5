"""Launch planning: parse -> LaunchConfig -> plan (hosts, slots) -> command and environment.

Every function here is pure except `run` and the build checks, so a launch can
be printed (`--dry-run`) and tested without starting anything.
"""

import dataclasses
import os
import shlex
import subprocess
import sys

from hvd_keras import launch_output, placement
from hvd_keras.cluster import host as host_of
from hvd_keras.cluster import SLURMEnvironment
from hvd_keras.cluster import slurm as slurm_vars

# Set unless the user already set them, by the launcher and again by
# `hvd_keras.init()` (so `horovodrun`, `mpirun` and `srun` launches get them
# too). Fusion: one allreduce buffer of up to 128 MiB per cycle; stall
# shutdown: a rank that never joins ends the job. MPI idle yielding: Horovod's
# background thread negotiates with the other ranks every cycle, and OpenMPI
# busy-polls while it waits, taking the core from the rank's own compute
# (measured: 35-50% of a pinned rank's CPU time; a compute-bound CNN step
# 128 ms instead of 84 ms at 2 ranks); yielding gives the core back. OpenMPI
# only turns it on by itself when there are more processes than cores,
# which misses the threads of a rank.
#
# OpenMPI's daemons and mpirun talk over TCP connections that are idle while
# ranks train; when a link goes down, mpirun learns of it only from TCP
# keepalive (300 s idle, then 9 probes 20 s apart: 8 minutes) and meanwhile
# waits for the daemon of the unreachable host to end the job. With keepalive
# after 20 s and 4 probes 5 s apart it gives up within 40 s (measured: a cut
# link ended mpirun and every rank in 31-41 s on namespace hosts), after each
# rank's watchdog (30 s, hvd_keras.watchdog) has said which rank waited.
RECOMMENDED_ENV = {
    "HOROVOD_FUSION_THRESHOLD": str(128 * 1024 * 1024),
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
    "OMPI_MCA_mpi_yield_when_idle": "1",
    "OMPI_MCA_oob_tcp_keepalive_time": "20",
    "OMPI_MCA_oob_tcp_keepalive_intvl": "5",
    "OMPI_MCA_oob_tcp_keepalive_probes": "4",
}
# Horovod's negotiation cycle. On CPUs a gradient waits for the next cycle
# after the backward pass, which a communication-bound model pays every step:
# 0.2 ms measured 1.17x the samples/s of 1 ms (median of 6 interleaved pairs,
# 2 ranks, bench/peers.py mlp) and the same on the compute-bound CNN. On GPUs
# Horovod's 1 ms stays: across many nodes every cycle is a collective.
# hvd_keras.scheduling: on CPUs Horovod's threads run on the cores the
# rank's compute leaves idle; on GPUs they keep the normal policy.
RECOMMENDED_CPU_ENV = {
    "HOROVOD_CYCLE_TIME": "0.2",
    "HVD_KERAS_HOROVOD_THREADS": "idle",
}
RECOMMENDED_GPU_ENV = {
    "HOROVOD_CYCLE_TIME": "1",
    "NCCL_DEBUG": "WARN",
    "HVD_KERAS_HOROVOD_THREADS": "normal",
}
# A single process: nothing is ever negotiated (hvd_keras sends no
# collective at size 1), yet Horovod's background thread still wakes every
# cycle. On a pinned core the 0.2 ms cycle's wake-ups cost a 1-process step
# 12-20% (bench/plan_check.py's CNN 131 -> 148 ms, MLP 1.28 -> 1.43 ms);
# Horovod's 1 ms was level with 5 and 50 ms.
RECOMMENDED_SINGLE_PROCESS_ENV = {
    "HOROVOD_CYCLE_TIME": "1",
}


def recommended_env(gpus, np=None, elastic=False):
    """The settings hvd_keras recommends for a job of `np` processes.

    Args:
        gpus: True on GPUs, False on CPUs, None where that is unknown (then
            only the settings common to both).
        np: the number of processes, None if unknown; 1 changes the cycle time.
        elastic: an elastic job (its processes start Horovod again after a
            reset): without `HOROVOD_FUSION_THRESHOLD` (see `ELASTIC_EXCLUSIVE`).
    """
    env = dict(RECOMMENDED_ENV)
    if gpus is not None:
        env.update(RECOMMENDED_GPU_ENV if gpus else RECOMMENDED_CPU_ENV)
    if np == 1:
        env.update(RECOMMENDED_SINGLE_PROCESS_ENV)
    if elastic:
        # 128 MiB is also Horovod's own default: nothing is lost.
        env.pop("HOROVOD_FUSION_THRESHOLD", None)
    return env


# Horovod 0.28.1 crashes (SIGSEGV in its parameter manager) when it starts
# again after a shutdown, as an elastic reset does, if both of these were
# set at its first start: each removes its parameter from the autotuner's
# vectors for good, and the next start writes the default into the emptied
# vector (horovod/common/parameter_manager.cc, BayesianParameter::SetValue).
ELASTIC_EXCLUSIVE = ("HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME")


def check_elastic_env(environ):
    """Raises when `environ` sets both of `ELASTIC_EXCLUSIVE`, which crash an elastic job at its first reset."""
    if all(environ.get(name) for name in ELASTIC_EXCLUSIVE):
        raise LaunchError(
            f"an elastic job cannot set both {' and '.join(ELASTIC_EXCLUSIVE)}: horovod 0.28.1 crashes "
            f"(segmentation fault) when a reset starts it again. Received: "
            + ", ".join(f"{n}={environ[n]}" for n in ELASTIC_EXCLUSIVE)
            + ". HINT: unset HOROVOD_FUSION_THRESHOLD (its default, 128 MiB, is what hvd_keras would set).")


class LaunchError(ValueError):
    """A launch that cannot work; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    script: str
    script_args: tuple = ()
    np: int = None
    hosts: str = None          # "host:slots,host:slots"
    hostfile: str = None
    controller: str = None     # "gloo", "mpi" or None (horovodrun decides)
    network_interface: str = None  # horovodrun --network-interface: the NIC(s) ranks talk over
    slurm: str = "auto"        # "auto", "force" or "off"
    gpus: bool = False
    dry_run: bool = False
    module: str = None         # run `python -m module` instead of a script
    # Elastic mode (horovodrun --min-np/--max-np/--host-discovery-script; Gloo only).
    elastic: bool = False
    min_np: int = None
    max_np: int = None
    discovery_script: str = None
    slots_per_host: int = None
    cooldown_range: tuple = None   # (low, high) seconds a failed host stays blacklisted
    reset_limit: int = None
    elastic_timeout: int = None


@dataclasses.dataclass(frozen=True)
class Plan:
    hosts: tuple               # ((host, slots), ...)
    np: int
    source: str                # where the hosts came from


def parse_hosts(text):
    """`"a:2,b:4"` -> `[("a", 2), ("b", 4)]`; a host without slots has 1."""
    hosts = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, slots = item.partition(":")
        if not name or (slots and not slots.isdigit()) or slots == "0":
            raise LaunchError(f"bad host {item!r} in -H {text!r}. HINT: write -H host1:4,host2:4.")
        hosts.append((name, int(slots or 1)))
    if not hosts:
        raise LaunchError(f"-H lists no hosts. Received: {text!r}. HINT: write -H host1:4,host2:4.")
    return hosts


def read_hostfile(path):
    """Hosts from a hostfile: lines `host slots=N` or `host:N`; `#` starts a comment."""
    if not os.path.isfile(path):
        raise LaunchError(f"hostfile {path!r} does not exist. HINT: check the path given to --hostfile.")
    hosts = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            slots = 1
            for field in fields[1:]:
                if field.startswith("slots="):
                    slots = field[6:]
            name = fields[0]
            if ":" in name:
                name, slots = name.split(":", 1)
            if not str(slots).isdigit() or int(slots) < 1:
                raise LaunchError(f"bad line {line!r} in hostfile {path}. HINT: write `host slots=4`.")
            hosts.append((name, int(slots)))
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no hosts. HINT: write one `host slots=N` per line.")
    return hosts


def plan(config, environ=None):
    """Decides hosts and the number of processes; raises LaunchError with the fix."""
    environ = os.environ if environ is None else environ
    if config.module is None and not os.path.isfile(config.script):
        raise LaunchError(f"script {config.script!r} does not exist. HINT: check the path of the training script.")
    slurm = SLURMEnvironment(environ)
    if config.hosts:
        hosts, source = parse_hosts(config.hosts), "-H"
    elif config.hostfile:
        hosts, source = read_hostfile(config.hostfile), "hostfile"
    elif config.slurm != "off" and slurm.detect():
        hosts, source = slurm.hosts(), f"Slurm job {environ[slurm_vars.JOB_ID]}"
    elif config.slurm == "force":
        raise _outside_allocation()
    else:
        if config.np is None:
            raise LaunchError("-np is required on a single machine. HINT: pass -np N, e.g. the number of GPUs.")
        hosts, source = [("localhost", config.np)], "localhost"
    slots = sum(s for _, s in hosts)
    np_ = slots if config.np is None else config.np
    if np_ < 1:
        raise LaunchError(f"-np must be >= 1. Received: -np {np_}. HINT: pass -np 2 or more.")
    if np_ > slots:
        raise LaunchError(f"-np {np_} is more than the {slots} slots available from {source} "
                          f"({format_hosts(hosts)}). HINT: lower -np or add slots.")
    return Plan(hosts=tuple(hosts), np=np_, source=source)



def processes_per_host(the_plan):
    """How horovodrun places the plan's processes: hosts filled in order, up to their slots."""
    left, placed = the_plan.np, []
    for host, slots in the_plan.hosts:
        n = min(slots, left)
        placed.append((host, n))
        left -= n
    return placed


def check_gpus(the_plan, gpu_count=None, is_local=None):
    """With --gpus: fails when this host would run more processes than it has GPUs.

    This host is found in the plan by name, by the address of any of its
    interfaces, or by a name that resolves to one (`-H 10.0.0.1:4` on the
    host 10.0.0.1). Remote hosts are not reachable from here and are checked
    by every process's `hvd_keras.init()` instead.

    Args:
        gpu_count: GPUs visible here; defaults to `placement.visible_gpu_count()`.
        is_local: decides whether a host of the plan is this one; defaults to
            `hvd_keras.cluster.host.is_local`.
    """
    is_local = host_of.is_local if is_local is None else is_local
    mine = [(host, n) for host, n in processes_per_host(the_plan) if n and is_local(host)]
    local = sum(n for _, n in mine)
    if local == 0:
        return
    count = placement.visible_gpu_count() if gpu_count is None else gpu_count
    if count is None:
        raise LaunchError(
            f"--gpus: cannot count this host's GPUs to place {local} processes (no nvidia-smi and "
            "CUDA_VISIBLE_DEVICES is unset). HINT: set CUDA_VISIBLE_DEVICES, or drop --gpus."
        )
    if local > count:
        if len(the_plan.hosts) > 1:
            named = mine[0][0]
            fix = (f"give this host ({named}) at most {count} slots, one process per GPU: "
                   f"-H {format_hosts([(h, count if h == named else s) for h, s in the_plan.hosts])}")
        else:
            fix = f"pass -np {count} (one process per GPU) or fewer"
        raise LaunchError(
            f"--gpus: {local} processes would run on this host but it has {count} GPU(s), so "
            f"processes would share a GPU. HINT: {fix}."
        )


def format_hosts(hosts):
    return ",".join(f"{h}:{s}" for h, s in hosts)


# Decided by each rank's init() from the devices that rank sees: a wrong
# guess here (a CPU login node launching onto GPU hosts) would cost GPU
# ranks their collectives' latency.
RANK_DECIDES = ("HVD_KERAS_HOROVOD_THREADS",)


def launch_env(config, environ=None, np=None):
    """The variables a launch of `np` processes adds: the recommended ones the user has not set."""
    environ = os.environ if environ is None else environ
    gpus = True if config.gpus else placement.visible_gpu_count(environ)
    # None: cannot tell from here (no nvidia-smi; remote hosts), so each
    # rank's init() sets the device-specific ones.
    wanted = recommended_env(None if gpus is None else bool(gpus), np, elastic=config.elastic)
    return {k: v for k, v in wanted.items() if k not in environ and k not in RANK_DECIDES}


def build_command(config, the_plan, python=None):
    """The horovodrun argv for a plan."""
    cmd = ["horovodrun", "-np", str(the_plan.np), "-H", format_hosts(the_plan.hosts)]
    if config.controller:
        cmd.append(f"--{config.controller}")
    if config.network_interface:
        # Named, horovodrun skips probing every host's interfaces over ssh
        # (about a minute for 2 hosts here) and Gloo and MPI use that NIC.
        cmd += ["--network-interface", config.network_interface]
    program = ["-m", config.module] if config.module else [config.script]
    cmd += [python or sys.executable, *program, *config.script_args]
    return cmd


def check_build(config):
    """Fails early when the requested controller is not built into horovod."""
    if config.controller is None:
        return
    from hvd_keras import _compat

    built = _compat.controller_built(config.controller)
    if not built:
        other = "mpi" if config.controller == "gloo" else "gloo"
        raise LaunchError(
            f"--{config.controller} was requested but horovod was built without {config.controller.upper()}. "
            f"HINT: use --{other}, or rebuild horovod with HOROVOD_WITH_{config.controller.upper()}=1."
        )


def describe(cmd, env):
    """The command as one shell line, with the variables it adds in front."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())), shlex.join(cmd)])


def check_elastic(config):
    """Checks an elastic launch; returns (np, min_np, max_np). Raises LaunchError with the fix."""
    if config.controller == "mpi":
        raise LaunchError("--elastic runs on Gloo only (horovodrun ignores --mpi in elastic mode and runs Gloo). "
                          "HINT: drop --mpi.")
    if not config.discovery_script:
        raise LaunchError("--elastic needs --discovery-script: an executable that prints the available hosts, one "
                          "`host:slots` per line, which horovodrun runs every second. HINT: --discovery-script "
                          "./hosts.sh (see the README's \"Elastic training\").")
    script = config.discovery_script.split()[0]
    if not (os.path.isfile(script) and os.access(script, os.X_OK)):
        raise LaunchError(f"--discovery-script {config.discovery_script!r} is not an executable file. HINT: chmod +x "
                          f"{script}, and give its path.")
    if config.hosts or config.hostfile:
        raise LaunchError("--elastic takes its hosts from --discovery-script, not -H or --hostfile. HINT: drop "
                          "-H/--hostfile and print those hosts from the discovery script.")
    low = config.min_np if config.min_np is not None else config.np
    if low is None or low < 1:
        raise LaunchError(f"--elastic needs --min-np >= 1 (or -np). Received: --min-np {config.min_np} -np "
                          f"{config.np}. HINT: --min-np 1 keeps training down to one process.")
    high = config.max_np
    if high is not None and high < low:
        raise LaunchError(f"--max-np must be >= --min-np. Received: --min-np {low} --max-np {high}. HINT: raise "
                          "--max-np or lower --min-np.")
    np_ = config.np if config.np is not None else low
    if np_ < low or (high is not None and np_ > high):
        raise LaunchError(f"-np must lie between --min-np and --max-np. Received: -np {np_}, --min-np {low}, "
                          f"--max-np {high}. HINT: -np is the number of processes to start with.")
    if config.cooldown_range is not None:
        a, b = config.cooldown_range
        if not 1 <= a <= b:
            raise LaunchError(f"--blacklist-cooldown-range needs 1 <= low <= high seconds. Received: {a} {b}. "
                              "HINT: --blacklist-cooldown-range 10 300.")
    return np_, low, high


def _outside_allocation():
    return LaunchError("--slurm was given but this is not inside a Slurm allocation (SLURM_JOB_ID is unset). "
                       "HINT: run it under sbatch or salloc, or drop --slurm.")


def slurm_discovery_command():
    """The discovery command an elastic job inside a Slurm allocation gets by default (`hvd-keras discover-hosts`)."""
    return shlex.join([sys.executable, "-m", "hvd_keras.cluster.discovery"])


def with_elastic_defaults(config, environ=None):
    """`config` with what an elastic launch inside a Slurm allocation takes from it.

    Without --discovery-script, the allocation's nodes that Slurm still
    offers (`hvd_keras.cluster.discovery`); without -np, all their slots;
    without --max-np, that many (the allocation does not grow).
    """
    environ = os.environ if environ is None else environ
    slurm = SLURMEnvironment(environ)
    if config.slurm == "force" and not slurm.detect():
        raise _outside_allocation()
    if config.discovery_script or config.hosts or config.hostfile or config.slurm == "off" or not slurm.detect():
        return config
    slots = sum(s for _, s in slurm.hosts())
    return dataclasses.replace(
        config, discovery_script=slurm_discovery_command(),
        np=config.np if config.np is not None else slots,
        max_np=config.max_np if config.max_np is not None else max(slots, config.np or 0))


def build_elastic_command(config, python=None):
    """The horovodrun argv of an elastic launch (checked by `check_elastic`)."""
    np_, low, high = check_elastic(config)
    cmd = ["horovodrun", "-np", str(np_), "--min-np", str(low)]
    if high is not None:
        cmd += ["--max-np", str(high)]
    cmd += ["--host-discovery-script", config.discovery_script]
    if config.slots_per_host is not None:
        cmd += ["--slots-per-host", str(config.slots_per_host)]
    if config.cooldown_range is not None:
        cmd += ["--blacklist-cooldown-range", *(str(v) for v in config.cooldown_range)]
    if config.reset_limit is not None:
        cmd += ["--reset-limit", str(config.reset_limit)]
    if config.elastic_timeout is not None:
        cmd += ["--elastic-timeout", str(config.elastic_timeout)]
    if config.network_interface:
        # Without it horovodrun waits for two hosts to probe their common interfaces.
        cmd += ["--network-interface", config.network_interface]
    program = ["-m", config.module] if config.module else [config.script]
    cmd += [python or sys.executable, *program, *config.script_args]
    return cmd


def elastic_env(config, environ=None):
    """What an elastic launch adds to the environment: the recommended settings and the sizes the job may take.

    `hvd_keras.elastic.fit` checks before the first step that its global
    batch splits over every size from --min-np to --max-np.
    """
    np_, low, high = check_elastic(config)
    environ = os.environ if environ is None else environ
    check_elastic_env(environ)
    env = launch_env(config, environ, None)
    env["HVD_KERAS_ELASTIC_MIN_NP"] = str(low)
    if high is not None:
        env["HVD_KERAS_ELASTIC_MAX_NP"] = str(high)
    return env


_ELASTIC_ONLY = {"min_np": "--min-np", "max_np": "--max-np", "discovery_script": "--discovery-script",
                 "slots_per_host": "--slots-per-host", "cooldown_range": "--blacklist-cooldown-range",
                 "reset_limit": "--reset-limit", "elastic_timeout": "--elastic-timeout"}


def check_not_elastic(config):
    """Refuses elastic-only settings in a launch that is not elastic (horovodrun would start an elastic job)."""
    given = [flag for field, flag in _ELASTIC_ONLY.items() if getattr(config, field) is not None]
    if given and not config.elastic:
        raise LaunchError(f"{', '.join(given)}: for elastic jobs only. Received: {' '.join(given)} without "
                          "--elastic. HINT: add --elastic, or drop them.")


def run(config, environ=None):
    """Plans, checks and runs (or prints, with dry_run) the launch; returns the exit code."""
    environ = dict(os.environ if environ is None else environ)
    check_not_elastic(config)
    if config.elastic:
        config = with_elastic_defaults(config, environ)
        cmd, env = build_elastic_command(config), elastic_env(config, environ)
        if config.dry_run:
            print(describe(cmd, env))
            return 0
        return subprocess.call(cmd, env=_with_venv_path({**environ, **env}))
    the_plan = plan(config, environ)
    check_build(config)
    if config.gpus:
        check_gpus(the_plan)
    env = launch_env(config, environ, the_plan.np)
    cmd = build_command(config, the_plan)
    if config.dry_run:
        print(describe(cmd, env))
        return 0
    return launch_output.run(cmd, _with_venv_path({**environ, **env}),
                             launch_output.rank_hosts(processes_per_host(the_plan)))


def _with_venv_path(env):
    # `.venv/bin/hvd-keras` works without activating the venv: horovodrun
    # lives next to this interpreter.
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if os.path.exists(os.path.join(bindir, "horovodrun")) and bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + (os.pathsep + path if path else "")
    return env
