"""`hvd-keras doctor`: one screen on whether this environment can run hvd_keras, to paste into a bug report.

It gathers facts (`gather`: Python, TensorFlow, Keras and horovod asked in a
child process, so that a crash while importing them is reported, not
suffered; GPUs and the driver from `nvidia-smi`; MPI; launchers; a Slurm
allocation; the recommended settings), judges them (`diagnose`, pure: each
problem one line with its fix) and prints them (`render`). It exits 1 when a
problem blocks training, 0 otherwise.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

from hvd_keras import horovod_build
from hvd_keras._version import __version__
from hvd_keras._keras_config import configured_backend
from hvd_keras.cluster import SLURMEnvironment
from hvd_keras.launcher import recommended_env

#: The proved ranges (README "Versions"): (lowest, highest) as (major, minor).
TENSORFLOW_RANGE = ((2, 16), (2, 21))
KERAS_RANGE = ((3, 0), (3, 15))
PYTHON_PROVED = ((3, 11), (3, 11))
BUILD = "hvd-keras build-horovod"


@dataclasses.dataclass(frozen=True)
class Finding:
    blocker: bool
    message: str                # what is wrong, with what was found
    fix: str                    # the command or setting that fixes it


@dataclasses.dataclass
class Facts:
    python: str = "%d.%d.%d" % sys.version_info[:3]
    executable: str = sys.executable
    tensorflow: dict = None     # version, cuda (None: CPU build), gpus (visible to it); or error
    keras: dict = None          # version, backend; or error
    horovod: dict = None        # version, mpi, gloo, nccl, cuda, build (hvd_keras_build.json); or missing / error
    crashed: str = None         # the step during which the child process died, with its signal
    nvidia: dict = None         # gpus (names), driver, cuda (the driver's), or None without nvidia-smi
    mpi: dict = None            # vendor, version, mpirun; None without mpirun
    launchers: dict = dataclasses.field(default_factory=dict)
    slurm: dict = None          # job_id, hosts; None outside an allocation
    environ: dict = dataclasses.field(default_factory=dict)


# --- gathering -----------------------------------------------------------------

# Each step prints its name first, so that a crash (a signal, an abort in a
# native library) names the step it happened in.
_PROBE = r"""
import json, os, sys
def say(tag, value):
    print(tag + " " + json.dumps(value), flush=True)
say("STEP", "tensorflow")
try:
    import tensorflow as tf
    info = tf.sysconfig.get_build_info()
    say("tensorflow", {"version": tf.__version__, "cuda": info.get("cuda_version") if info.get("is_cuda_build") else None,
                       "gpus": len(tf.config.list_physical_devices("GPU"))})
except Exception as e:
    say("tensorflow", {"error": (str(e).splitlines() or [type(e).__name__])[0]})
say("STEP", "keras")
try:
    import keras
    say("keras", {"version": keras.__version__})
except Exception as e:
    say("keras", {"error": (str(e).splitlines() or [type(e).__name__])[0]})
say("STEP", "horovod")
try:
    import horovod
except Exception as e:
    say("horovod", {"missing": True, "error": (str(e).splitlines() or [""])[0]})
else:
    found = {"version": horovod.__version__}
    try:
        with open(os.path.join(os.path.dirname(horovod.__file__), "hvd_keras_build.json")) as f:
            found["build"] = json.load(f)
    except (OSError, ValueError):
        found["build"] = None
    try:
        import horovod.tensorflow as hvd
        found.update(mpi=bool(hvd.mpi_built()), gloo=bool(hvd.gloo_built()), nccl=int(hvd.nccl_built() or 0),
                     cuda=bool(hvd.cuda_built()))
    except Exception as e:
        found["error"] = (str(e).splitlines() or [type(e).__name__])[0]
    say("horovod", found)
say("STEP", "done")
"""


def probe_python(python=sys.executable, timeout=300):
    """TensorFlow, Keras and horovod as `python` sees them; a crash is recorded with its step.

    Keras is imported on TensorFlow whatever backend is configured (the
    configured one is judged apart, `configured_backend`): Keras fails to
    import with a backend that is not installed.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"crashed": f"the import check did not finish in {timeout} s"}
    found, step = {}, None
    for line in proc.stdout.splitlines():
        tag, _, value = line.partition(" ")
        if tag == "STEP":
            step = json.loads(value)
        elif tag in ("tensorflow", "keras", "horovod"):
            found[tag] = json.loads(value)
    if step != "done":
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        found["crashed"] = f"importing {step} killed the process ({how}; last line: {last})"
    return found


def probe_nvidia(environ=None):
    """GPU names, the driver and the CUDA version it supports, from nvidia-smi; None without nvidia-smi."""
    environ = os.environ if environ is None else environ
    smi = shutil.which("nvidia-smi", path=environ.get("PATH", ""))
    if smi is None:
        return None
    listing = horovod_build._run_text([smi, "-L"])
    header = horovod_build._run_text([smi])
    driver = re.search(r"Driver Version:\s*([\d.]+)", header)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"gpus": re.findall(r"^GPU \d+: (.*?) \(UUID", listing, re.M),
            "driver": driver.group(1) if driver else None, "cuda": cuda.group(1) if cuda else None}


def probe_mpi(environ=None):
    environ = os.environ if environ is None else environ
    mpirun = shutil.which("mpirun", path=environ.get("PATH", ""))
    if mpirun is None:
        return None
    vendor, version = horovod_build.parse_mpi_version(horovod_build._run_text([mpirun, "--version"]))
    return {"vendor": vendor, "version": version, "mpirun": mpirun}


def gather(python=sys.executable, environ=None):
    environ = dict(os.environ if environ is None else environ)
    # The environment's own launchers first, as `hvd-keras run` uses them.
    path = os.path.dirname(python) + os.pathsep + environ.get("PATH", "")
    environ_path = dict(environ, PATH=path)
    facts = Facts(python="%d.%d.%d" % sys.version_info[:3], executable=python, environ=environ)
    found = probe_python(python)
    facts.tensorflow, facts.keras, facts.horovod = found.get("tensorflow"), found.get("keras"), found.get("horovod")
    if facts.keras is not None and "error" not in facts.keras:
        facts.keras["backend"], facts.keras["backend_from"] = configured_backend(environ)
    facts.crashed = found.get("crashed")
    facts.nvidia = probe_nvidia(environ_path)
    facts.mpi = probe_mpi(environ_path)
    facts.launchers = {name: shutil.which(name, path=path) for name in ("horovodrun", "mpirun", "srun")}
    slurm = SLURMEnvironment(environ)
    if slurm.detect():
        try:
            facts.slurm = {"job_id": environ.get("SLURM_JOB_ID"), "hosts": slurm.hosts()}
        except (ValueError, RuntimeError) as e:
            facts.slurm = {"job_id": environ.get("SLURM_JOB_ID"), "hosts": [], "error": str(e)}
    return facts


# --- judging -------------------------------------------------------------------

def _version(text):
    numbers = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in numbers[:2]) if len(numbers) >= 2 else None


def _in(version, bounds):
    v = _version(version)
    return v is not None and bounds[0] <= v <= bounds[1]


def _range(bounds):
    return f"{bounds[0][0]}.{bounds[0][1]} to {bounds[1][0]}.{bounds[1][1]}"


def gpus_expected(facts):
    """True when this machine has NVIDIA GPUs (nvidia-smi lists one) or TensorFlow sees one."""
    return bool((facts.nvidia or {}).get("gpus")) or bool((facts.tensorflow or {}).get("gpus"))


def diagnose(facts):
    """The problems of an environment, blockers first; pure."""
    found = []

    def problem(blocker, message, fix):
        found.append(Finding(blocker, message, fix))

    tf, keras, hvd = facts.tensorflow or {}, facts.keras or {}, facts.horovod or {}
    if facts.crashed:
        problem(True, f"Python crashed: {facts.crashed}.",
                "reinstall the package named there into this environment; then run hvd-keras doctor again.")
    if (_version(facts.python) or (0, 0)) < (3, 11):
        problem(True, f"hvd_keras needs Python 3.11 or newer. Received: Python {facts.python}.",
                "create the environment with python3.11.")
    elif not _in(facts.python, PYTHON_PROVED):
        problem(False, f"Python {facts.python} is not among the proved versions ({_range(PYTHON_PROVED)}).",
                "use Python 3.11 if anything misbehaves.")
    if "error" in tf or not tf and not facts.crashed:
        problem(True, f"TensorFlow does not import: {tf.get('error', 'not installed')}.",
                f"pip install 'tensorflow-cpu>=2.16,<2.22' (CPUs) or 'tensorflow[and-cuda]>=2.16,<2.22' (GPUs).")
    elif tf and not _in(tf["version"], TENSORFLOW_RANGE):
        problem(True, f"TensorFlow {tf['version']} is outside the supported {_range(TENSORFLOW_RANGE)}.",
                "pip install 'tensorflow-cpu==2.21.0' (or a version of tools/versions.txt), then " + BUILD + ".")
    if "error" in keras:
        problem(True, f"Keras does not import: {keras['error']}.", "pip install 'keras>=3.0,<3.16'.")
    elif keras:
        if not _in(keras["version"], KERAS_RANGE):
            problem(True, f"Keras {keras['version']} is outside the supported {_range(KERAS_RANGE)}.",
                    "pip install 'keras==3.15.1'.")
        if keras.get("backend") != "tensorflow":
            problem(True, f"Keras is set to the {keras.get('backend')!r} backend (by {keras.get('backend_from')}); "
                    "hvd_keras needs TensorFlow's.",
                    "export KERAS_BACKEND=tensorflow (or set \"backend\" in ~/.keras/keras.json).")
    if hvd.get("missing") or (not hvd and tf and not facts.crashed):
        problem(True, "horovod is not installed (it has no wheel on PyPI and must be built against TensorFlow).",
                BUILD + " (add --gpu on a GPU machine).")
    elif hvd:
        if hvd.get("version") != horovod_build.HOROVOD_VERSION:
            problem(True, f"horovod {hvd.get('version')} is installed; hvd_keras needs "
                    f"{horovod_build.HOROVOD_VERSION}.", BUILD + ".")
        build = hvd.get("build") or {}
        built_tf = (build.get("tensorflow") or {}).get("version")
        if "error" in hvd:
            problem(True, f"horovod's TensorFlow layer does not load: {hvd['error']}.",
                    BUILD + " (it builds horovod against the installed TensorFlow).")
        elif built_tf and tf.get("version") and built_tf != tf["version"]:
            problem(True, f"horovod was built for TensorFlow {built_tf}, but TensorFlow {tf['version']} is installed.",
                    BUILD + ".")
        if "error" not in hvd and not (hvd.get("mpi") or hvd.get("gloo")):
            problem(True, "horovod was built without a controller (neither MPI nor Gloo).", BUILD + ".")
        if "error" not in hvd and gpus_expected(facts) and not hvd.get("nccl"):
            problem(True, "this machine has GPUs but horovod was built without NCCL: gradients would cross host "
                    "memory, many times slower.", BUILD + " --gpu")
        if hvd.get("mpi") and not facts.mpi:
            problem(False, "horovod has the MPI controller but no mpirun is on PATH.",
                    "`module load openmpi` (the MPI horovod was built with), or launch with horovodrun --gloo.")
        if hvd.get("mpi") is False and "error" not in hvd:
            problem(False, "horovod was built without MPI: only Gloo (horovodrun --gloo) can launch.",
                    "for MPI, put mpicc on PATH (`module load openmpi`) and run " + BUILD + " again.")
        if hvd.get("version") and not facts.launchers.get("horovodrun"):
            problem(False, "horovodrun is not on PATH.", f"export PATH={os.path.dirname(facts.executable)}:$PATH")
    nvidia = facts.nvidia or {}
    if nvidia.get("gpus"):
        if tf and "error" not in tf and not tf.get("gpus"):
            problem(True, f"nvidia-smi lists {len(nvidia['gpus'])} GPU(s) but TensorFlow sees none "
                    f"({'a CPU-only TensorFlow' if not tf.get('cuda') else 'its CUDA libraries did not load'}).",
                    f"pip install 'tensorflow[and-cuda]=={tf.get('version', '2.21.0')}' (and uninstall "
                    "tensorflow-cpu).")
        driver_cuda = _version(nvidia.get("cuda"))
        kernels = ((hvd.get("build") or {}).get("cuda") or {}).get("version")
        for what, needed in (("TensorFlow", tf.get("cuda")), ("horovod's kernels", kernels)):
            if driver_cuda and _version(needed) and _version(needed) > driver_cuda:
                problem(True, f"the NVIDIA driver {nvidia.get('driver')} supports CUDA {nvidia.get('cuda')}, but "
                        f"{what} needs CUDA {needed}.",
                        "update the NVIDIA driver, or (for horovod) rebuild with the cluster's CUDA toolkit: "
                        "`module load cuda`, then " + BUILD + " --gpu --no-cache.")
    if facts.slurm and not facts.launchers.get("srun"):
        problem(False, "inside a Slurm allocation, but srun is not on PATH.", "use hvd-keras run, or load Slurm's module.")
    return sorted(found, key=lambda f: not f.blocker)


# --- printing ------------------------------------------------------------------

def _describe_horovod(hvd):
    if not hvd or hvd.get("missing"):
        return "not installed"
    if "error" in hvd:
        return f"{hvd.get('version')} (does not load)"
    controllers = [name for name in ("mpi", "gloo") if hvd.get(name)]
    nccl = hvd.get("nccl")
    ops = f"NCCL {nccl // 10000}.{nccl // 100 % 100}.{nccl % 100}" if nccl else "CPU only (no NCCL)"
    build = hvd.get("build")
    origin = (f"built by hvd-keras build-horovod {build.get('built', '')} for TensorFlow "
              f"{build['tensorflow']['version']}" if build else "built elsewhere")
    text = f"{hvd['version']}: controllers {', '.join(c.upper() if c == 'mpi' else 'Gloo' for c in controllers) or 'none'}; "
    text += f"tensor operations {ops}; {origin}"
    if build and build.get("cuda"):
        text += f"; kernels CUDA {build['cuda']['version']}"
    return text


def render(facts, findings):
    tf, keras = facts.tensorflow or {}, facts.keras or {}
    nvidia = facts.nvidia
    rows = [
        ("hvd_keras", f"{__version__} ({os.path.dirname(os.path.abspath(__file__))})"),
        ("python", f"{facts.python} ({facts.executable})"),
        ("tensorflow", tf.get("error") and f"does not import: {tf['error']}" or
         f"{tf.get('version')} ({'CUDA ' + tf['cuda'] if tf.get('cuda') else 'CPU'} build; GPUs visible to it: "
         f"{tf.get('gpus', 0)}); supported {_range(TENSORFLOW_RANGE)}" if tf else "not checked"),
        ("keras", keras.get("error") and f"does not import: {keras['error']}" or
         f"{keras.get('version')}, backend {keras.get('backend')}; supported {_range(KERAS_RANGE)}" if keras
         else "not checked"),
        ("horovod", _describe_horovod(facts.horovod)),
        ("gpus", "no nvidia-smi" if nvidia is None else
         f"{len(nvidia['gpus'])}: {', '.join(nvidia['gpus']) or 'none'}; driver {nvidia.get('driver')} "
         f"(CUDA {nvidia.get('cuda')})"),
        ("mpi", f"{facts.mpi['vendor']} {facts.mpi['version']} ({facts.mpi['mpirun']})" if facts.mpi
         else "no mpirun on PATH"),
        ("launchers", ", ".join(f"{k} {v or 'not found'}" for k, v in facts.launchers.items())),
        ("slurm", f"job {facts.slurm['job_id']} on {','.join(f'{h}:{s}' for h, s in facts.slurm['hosts'])}"
         if facts.slurm else "no allocation"),
    ]
    gpus = gpus_expected(facts)
    settings = [f"{k}={facts.environ.get(k, v)} ({'yours' if k in facts.environ else 'hvd_keras sets it'})"
                for k, v in sorted(recommended_env(gpus).items())]
    rows.append(("settings", ("\n" + " " * 12).join(settings)))
    lines = [f"hvd-keras doctor: can this environment run hvd_keras ({'GPUs' if gpus else 'CPUs'})?", ""]
    lines += [f"{name:<11} {value}" for name, value in rows]
    lines.append("")
    if not findings:
        lines.append("no problems found.")
    for f in findings:
        lines.append(f"{'BLOCKER' if f.blocker else 'warning'}: {f.message} HINT: {f.fix}")
    return "\n".join(lines)


def main(python=sys.executable):
    facts = gather(python)
    findings = diagnose(facts)
    print(render(facts, findings))
    return 1 if any(f.blocker for f in findings) else 0
