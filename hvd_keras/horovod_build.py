"""`hvd-keras build-horovod`: builds horovod 0.28.1 against the active environment's TensorFlow, and caches it.

horovod 0.28.1, the last release, has no wheel on PyPI, and its source
distribution does not build against TensorFlow 2.19 and newer as released.
This module builds it into the environment hvd_keras runs in, without root:

- with the site's MPI (the `mpicc` on `PATH`, e.g. after `module load
  openmpi`) and Gloo; with Gloo alone, said so, where there is no MPI;
- for GPUs (`--gpu`, or detected from `nvidia-smi`), with NCCL (the
  `nvidia-nccl` wheel, `NCCL_HOME`, or the system's) and a CUDA toolkit
  (`HOROVOD_CUDA_HOME`, `CUDA_HOME`, `CUDA_PATH`, the `nvcc` on `PATH`,
  `/usr/local/cuda`, or one assembled from PyPI with `--cuda-from-wheels`);
- with the glue that TensorFlow 2.19+ needs (package data in
  `hvd_keras/horovod_glue/`, each piece only where the installed TensorFlow
  lacks what horovod expects), and the highwayhash and farmhash headers that
  TensorFlow's own wheel carries under `include/external/` but off the
  include path that horovod's build uses.

Every build is cached under `~/.cache/hvd_keras` (`HVD_KERAS_CACHE`), keyed by
everything the binary depends on (`BuildInputs.key`); a build found there is
installed in seconds. The library is left with no search path into the
environment that built it: an NCCL of the `nvidia-nccl` wheel is found
relative to the library, so any environment of the same key can reuse it.

It is a parse -> probe -> `plan` (pure: the variables, include directories
and key) -> `build` pipeline; `hvd-keras build-horovod --dry-run` prints the plan.
"""

import base64
import dataclasses
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from hvd_keras import _elf

HOROVOD_VERSION = "0.28.1"
GLUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "horovod_glue")
#: The CUDA 13 compiler that `--cuda-from-wheels` takes from PyPI (no CUDA 12 nvcc exists there).
NVCC_WHEEL_VERSION = "13.0.88"
#: Part of every cache key: raise it when `plan` changes what a build produces.
RECIPE = 1
#: Written into the installed horovod package: what `hvd-keras doctor` compares with the environment.
BUILD_INFO = "hvd_keras_build.json"
_PREFIX = "[build-horovod]"


class BuildError(RuntimeError):
    """A build that cannot go ahead or failed; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class TensorFlow:
    version: str
    include: str
    lib: str
    cuda: str = None            # the CUDA version TensorFlow was built with; None for a CPU build
    site: str = None            # the site-packages directory TensorFlow (and horovod) live in


@dataclasses.dataclass(frozen=True)
class MPI:
    vendor: str                 # "openmpi", "mpich", "intelmpi", "mvapich2" or "mpi"
    version: str
    mpicc: str                  # where it is: another installation of the same version is another key


@dataclasses.dataclass(frozen=True)
class Nccl:
    include: str
    lib: str                    # the directory with libnccl.so*
    version: str
    source: str                 # "wheel", "NCCL_HOME", "HOROVOD_NCCL_HOME", "system"


@dataclasses.dataclass(frozen=True)
class Cuda:
    home: str                   # None with `from_wheels` until it is assembled
    version: str
    from_wheels: bool = False


@dataclasses.dataclass(frozen=True)
class BuildInputs:
    """Everything the horovod binary depends on; `key` names its cache entry."""

    python: str                 # "3.11"
    machine: str                # "x86_64"
    device: str                 # "cpu" or "gpu"
    tensorflow: TensorFlow
    mpi: MPI = None             # None: a Gloo-only build
    cuda: Cuda = None
    nccl: Nccl = None
    compiler: str = ""          # the C++ compiler's first version line
    libc: str = ""

    @property
    def nccl_relative(self):
        """True when NCCL is the wheel in the same site-packages as horovod: found relative to the library."""
        return (self.nccl is not None and self.nccl.source == "wheel" and self.tensorflow.site is not None
                and self.nccl.lib.startswith(self.tensorflow.site + os.sep))

    @property
    def key(self):
        """The cache key: readable fields, then a hash of every input (paths, compiler, libc, the glue)."""
        tf = self.tensorflow
        parts = [f"horovod{HOROVOD_VERSION}", f"tf{tf.version}" + (f"-cuda{tf.cuda}" if tf.cuda else ""),
                 f"py{self.python}", self.machine, self.device,
                 f"{self.mpi.vendor}{self.mpi.version}" if self.mpi else "gloo-only"]
        if self.device == "gpu":
            parts += [f"nvcc{self.cuda.version}", f"nccl{self.nccl.version}-{self.nccl.source.lower()}"]
        hashed = {
            "mpicc": self.mpi.mpicc if self.mpi else None,
            "cuda": dataclasses.asdict(self.cuda) if self.cuda else None,
            # A wheel's NCCL is found relative to horovod: its location is not part of the binary.
            "nccl": None if self.nccl is None else (
                {"version": self.nccl.version} if self.nccl_relative else dataclasses.asdict(self.nccl)),
            "compiler": self.compiler, "libc": self.libc, "glue": _glue_digest(),
        }
        if hashed["cuda"]:
            hashed["cuda"].pop("home")  # the toolkit's files are not linked, its version is in the name
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]
        return "-".join(parts + [digest])


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    inputs: BuildInputs
    env: dict                   # the variables the build adds
    include_dirs: tuple         # prepended to CPLUS_INCLUDE_PATH, shim first
    glue: tuple                 # names of the glue pieces applied
    notes: tuple                # what the user should know before a build of minutes


# --- probing the environment -------------------------------------------------

_TF_PROBE = r"""
import json, os, sys
import tensorflow as tf
info = tf.sysconfig.get_build_info()
site = os.path.dirname(os.path.dirname(os.path.abspath(tf.__file__)))
nccl = None
try:
    import nvidia.nccl
    nccl = [p for p in nvidia.nccl.__path__][0]
except Exception:
    pass
print("HVD_KERAS_PROBE " + json.dumps({
    "version": tf.__version__, "include": tf.sysconfig.get_include(), "lib": tf.sysconfig.get_lib(),
    "cuda": info.get("cuda_version") if info.get("is_cuda_build") else None, "site": site, "nccl_wheel": nccl,
    "python": "%d.%d" % sys.version_info[:2]}))
"""


def probe_tensorflow(python=sys.executable):
    """TensorFlow's version, headers, library and CUDA build, asked from `python` (and the NCCL wheel beside it)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([python, "-c", _TF_PROBE], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"could not ask {python} for TensorFlow ({e}). HINT: run hvd-keras from the environment "
                         "that has TensorFlow.") from None
    line = next((l for l in proc.stdout.splitlines() if l.startswith("HVD_KERAS_PROBE ")), None)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"horovod is built against the environment's TensorFlow, but `import tensorflow` failed in "
                         f"{python}: {last}. HINT: pip install 'tensorflow-cpu>=2.16,<2.22' (CPUs) or "
                         "'tensorflow[and-cuda]>=2.16,<2.22' (GPUs) into this environment first.")
    return json.loads(line.split(" ", 1)[1])


def _run_text(cmd, timeout=30):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout + proc.stderr


_MPI_VENDORS = [("openmpi", r"Open MPI"), ("intelmpi", r"Intel\(R\) MPI"), ("mvapich2", r"MVAPICH2"),
                ("mpich", r"MPICH|HYDRA")]


def parse_mpi_version(text):
    """`(vendor, version)` from what `mpicc --showme:version`, `mpicc -v` or `mpirun --version` print."""
    vendor = next((name for name, pattern in _MPI_VENDORS if re.search(pattern, text)), "mpi")
    number = re.search(r"(?:Open MPI|version|Version:?|Library)\s*v?(\d+(?:\.\d+)+)", text)
    number = number or re.search(r"(\d+\.\d+(?:\.\d+)*)", text)
    return vendor, number.group(1) if number else "unknown"


def find_mpi(environ=None):
    """The MPI of the `mpicc` on PATH, or None (a Gloo-only build)."""
    environ = os.environ if environ is None else environ
    mpicc = shutil.which("mpicc", path=environ.get("PATH", ""))
    if mpicc is None:
        return None
    text = _run_text([mpicc, "--showme:version"]) or ""
    if "Open MPI" not in text:
        text = _run_text([mpicc, "-v"]) + _run_text([os.path.join(os.path.dirname(mpicc), "mpirun"), "--version"])
    vendor, version = parse_mpi_version(text)
    return MPI(vendor=vendor, version=version, mpicc=mpicc)


def _is_toolkit(path):
    return bool(path) and os.access(os.path.join(path, "bin", "nvcc"), os.X_OK) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda(environ=None, default="/usr/local/cuda"):
    """The CUDA toolkit horovod's kernels compile with: a directory with bin/nvcc and include/cuda_runtime.h.

    Looked for in HOROVOD_CUDA_HOME (an invalid one is an error, not
    skipped), CUDA_HOME, CUDA_PATH, the toolkit of the nvcc on PATH and
    `default`.
    """
    environ = os.environ if environ is None else environ
    given = environ.get("HOROVOD_CUDA_HOME")
    if given:
        if _is_toolkit(given):
            return given
        raise BuildError(f"HOROVOD_CUDA_HOME is not a CUDA toolkit. Received: HOROVOD_CUDA_HOME={given} (expected "
                         "bin/nvcc and include/cuda_runtime.h under it). HINT: point it at the toolkit's top "
                         "directory, e.g. /usr/local/cuda-12.5.")
    candidates = [environ.get("CUDA_HOME"), environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc", path=environ.get("PATH", ""))
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append(default)
    for path in candidates:
        if _is_toolkit(path):
            return path
    raise BuildError("no CUDA toolkit found for the NCCL build of horovod (it compiles CUDA kernels with nvcc; looked "
                     "at HOROVOD_CUDA_HOME, CUDA_HOME, CUDA_PATH, the nvcc on PATH and /usr/local/cuda). HINT: "
                     "`module load cuda` or set HOROVOD_CUDA_HOME=/path/to/cuda-12.x; or pass --cuda-from-wheels to "
                     "build with PyPI's CUDA 13 nvcc (needs NVIDIA driver >= 580); or --cpu for a CPU-only build.")


def nvcc_version(home):
    match = re.search(r"release (\d+\.\d+)", _run_text([os.path.join(home, "bin", "nvcc"), "--version"]))
    return match.group(1) if match else "unknown"


def nccl_header_version(include):
    """"2.21.5" from nccl.h's NCCL_MAJOR/MINOR/PATCH, or "unknown"."""
    try:
        with open(os.path.join(include, "nccl.h")) as f:
            text = f.read()
    except OSError:
        return "unknown"
    parts = [re.search(rf"#define\s+NCCL_{p}\s+(\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else "unknown"


def _nccl_at(include, lib, source):
    if os.path.isfile(os.path.join(include, "nccl.h")) and glob.glob(os.path.join(lib, "libnccl.so*")):
        return Nccl(include=include, lib=lib, version=nccl_header_version(include), source=source)
    return None


def find_nccl(environ=None, wheel=None, system_dirs=("/usr", "/usr/local")):
    """NCCL for the GPU build: HOROVOD_NCCL_* or NCCL_HOME as set, else the `nvidia-nccl` wheel, else the system's."""
    environ = os.environ if environ is None else environ
    for variable in ("HOROVOD_NCCL_HOME", "NCCL_HOME"):
        home = environ.get(variable)
        if home:
            found = _nccl_at(environ.get("HOROVOD_NCCL_INCLUDE", os.path.join(home, "include")),
                             environ.get("HOROVOD_NCCL_LIB", os.path.join(home, "lib")), variable)
            if found is None:
                raise BuildError(f"{variable} has no NCCL. Received: {variable}={home} (expected include/nccl.h and "
                                 f"lib/libnccl.so*). HINT: point it at NCCL's top directory, or unset it to use the "
                                 "nvidia-nccl wheel.")
            return found
    if wheel:
        found = _nccl_at(os.path.join(wheel, "include"), os.path.join(wheel, "lib"), "wheel")
        if found:
            return found
    for prefix in system_dirs:
        for lib in ("lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu", "lib64", "lib"):
            found = _nccl_at(os.path.join(prefix, "include"), os.path.join(prefix, lib), "system")
            if found:
                return found
    raise BuildError("no NCCL found for the GPU build of horovod (looked at HOROVOD_NCCL_HOME, NCCL_HOME, the "
                     "nvidia-nccl wheel and /usr). HINT: pip install 'tensorflow[and-cuda]' (it brings the "
                     "nvidia-nccl-cu12 wheel), or set NCCL_HOME, or pass --cpu for a CPU-only build.")


def _compiler(environ):
    cxx = environ.get("CXX") or shutil.which("c++", path=environ.get("PATH", "")) or shutil.which(
        "g++", path=environ.get("PATH", ""))
    if not cxx:
        raise BuildError("no C++ compiler found (looked at CXX, c++ and g++ on PATH). HINT: `module load gcc`, or "
                         "install g++ (Debian: apt-get install g++).")
    return (_run_text([cxx, "--version"]).splitlines() or [cxx])[0].strip()


def probe(device, python=sys.executable, environ=None, cuda_from_wheels=False):
    """The `BuildInputs` of this environment for a `device` ("cpu" or "gpu") build."""
    environ = os.environ if environ is None else environ
    tf = probe_tensorflow(python)
    cuda = nccl = None
    if device == "gpu":
        if not tf["cuda"]:
            raise BuildError(f"the GPU build of horovod needs TensorFlow built with CUDA. Received: TensorFlow "
                             f"{tf['version']} without CUDA (tensorflow-cpu?). HINT: pip install "
                             f"'tensorflow[and-cuda]=={tf['version']}', or pass --cpu.")
        if cuda_from_wheels:
            cuda = Cuda(home=None, version=".".join(NVCC_WHEEL_VERSION.split(".")[:2]), from_wheels=True)
        else:
            home = find_cuda(environ)
            cuda = Cuda(home=home, version=nvcc_version(home))
        nccl = find_nccl(environ, wheel=tf["nccl_wheel"])
    return BuildInputs(
        python=tf["python"], machine=platform.machine(), device=device,
        tensorflow=TensorFlow(version=tf["version"], include=tf["include"], lib=tf["lib"], cuda=tf["cuda"],
                              site=tf["site"]),
        mpi=find_mpi(environ), cuda=cuda, nccl=nccl, compiler=_compiler(environ),
        libc="-".join(platform.libc_ver()))


# --- the plan ------------------------------------------------------------------

def _glue_digest():
    digest = hashlib.sha256(f"recipe {RECIPE}".encode())
    for root, _, files in sorted(os.walk(GLUE)):
        for name in sorted(f for f in files if f.endswith(".h")):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()[:12]


def _exports(library_glob, symbol):
    for path in glob.glob(library_glob):
        if symbol in _run_text(["nm", "-D", "--defined-only", path], timeout=120):
            return True
    return False


def glue_for(tf, device):
    """The glue pieces the installed TensorFlow needs, decided from its headers and library."""
    pieces = []
    if not os.path.isfile(os.path.join(tf.include, "tensorflow/compiler/xla/client/xla_builder.h")):
        pieces.append("xla_builder.h")
        if device == "gpu":
            statusor = [os.path.join(tf.include, p) for p in ("xla/statusor.h", "tensorflow/compiler/xla/statusor.h")]
            if not any(os.path.isfile(p) and "StatusOr" in open(p).read() for p in statusor):
                pieces.append("xla_statusor.h")
            if not _exports(os.path.join(tf.lib, "libtensorflow_framework.so*"), "AsGpuStreamValue"):
                pieces.append("as_gpu_stream_value.h")
    tma = os.path.join(tf.include, "xla/stream_executor/gpu/tma_metadata.h")
    if (os.path.isfile(tma) and '#include "llvm/ADT/ArrayRef.h"' in open(tma).read()
            and not os.path.isfile(os.path.join(tf.include, "llvm/ADT/ArrayRef.h"))):
        pieces.append("llvm/ADT")
    return pieces


def bundled_header_dirs(tf):
    """Directories of TensorFlow's own wheel that hold headers its headers include but its include path lacks.

    TensorFlow 2.21 includes `highwayhash/arch_specific.h` and `farmhash.h`
    from its public headers, and ships both under `include/external/`
    (`highwayhash/`, `farmhash_archive/src/`), not where those includes look.
    """
    dirs = []
    for header, bundled in (("highwayhash/arch_specific.h", "external/highwayhash"),
                            ("farmhash.h", "external/farmhash_archive/src")):
        if not os.path.isfile(os.path.join(tf.include, header)) and os.path.isfile(
                os.path.join(tf.include, bundled, header)):
            dirs.append(os.path.join(tf.include, bundled))
    return dirs


def plan(inputs, shim, nccl_link_dir=None, cuda_home=None, jobs=None):
    """The variables and include directories of the build (pure but for reading TensorFlow's headers).

    Args:
        shim: the directory the glue goes into (`write_glue`).
        nccl_link_dir: a directory with an unversioned `libnccl.so` link when
            NCCL's own has only `libnccl.so.2`.
        cuda_home: the toolkit assembled with `--cuda-from-wheels`.
    """
    env = {
        "HOROVOD_WITH_TENSORFLOW": "1", "HOROVOD_WITHOUT_PYTORCH": "1", "HOROVOD_WITHOUT_MXNET": "1",
        "HOROVOD_WITH_GLOO": "1",
        # Debian's cmake 3.25 and PyPI's cmake 4.x both build gloo with this.
        "CMAKE_POLICY_VERSION_MINIMUM": "3.5",
        "MAKEFLAGS": f"-j{jobs or os.cpu_count() or 2}",
    }
    notes = []
    if inputs.mpi:
        env["HOROVOD_WITH_MPI"] = "1"
    else:
        env["HOROVOD_WITHOUT_MPI"] = "1"
        notes.append("no mpicc on PATH: building with Gloo only (launch with horovodrun --gloo; for MPI, "
                     "`module load openmpi` or install OpenMPI first and build again).")
    if inputs.device == "gpu":
        env.update({"HOROVOD_GPU_OPERATIONS": "NCCL", "HOROVOD_CUDA_HOME": cuda_home or inputs.cuda.home,
                    "HOROVOD_NCCL_INCLUDE": inputs.nccl.include, "HOROVOD_NCCL_LIB": nccl_link_dir or inputs.nccl.lib,
                    "HOROVOD_NCCL_LINK": "SHARED"})
        tf_major, nvcc_major = (inputs.tensorflow.cuda or "").split(".")[0], inputs.cuda.version.split(".")[0]
        if tf_major != nvcc_major:
            notes.append(f"horovod's kernels will be CUDA {inputs.cuda.version} code while TensorFlow was built with "
                         f"CUDA {inputs.tensorflow.cuda}: the NVIDIA driver must support CUDA {inputs.cuda.version}"
                         + (" (driver >= 580)." if nvcc_major == "13" else "."))
    include_dirs = (shim, *bundled_header_dirs(inputs.tensorflow))
    return BuildPlan(inputs=inputs, env=env, include_dirs=include_dirs,
                     glue=tuple(glue_for(inputs.tensorflow, inputs.device)), notes=tuple(notes))


def write_glue(pieces, shim):
    """Writes the glue pieces into the include directory `shim`."""
    header = os.path.join(shim, "tensorflow/compiler/xla/client/xla_builder.h")
    for piece in pieces:
        if piece == "llvm/ADT":
            shutil.copytree(os.path.join(GLUE, "llvm"), os.path.join(shim, "llvm"), dirs_exist_ok=True)
            continue
        # Every other piece goes into the forwarding header: xla_mpi_ops.cc, the one
        # file that needs them, is the one file that includes it.
        os.makedirs(os.path.dirname(header), exist_ok=True)
        with open(os.path.join(GLUE, piece)) as src, open(header, "a") as dst:
            dst.write(src.read())


def describe(the_plan):
    """The plan as the lines `--dry-run` prints."""
    lines = [f"key: {the_plan.inputs.key}",
             f"tensorflow: {the_plan.inputs.tensorflow.version} ({the_plan.inputs.tensorflow.include})",
             f"mpi: {the_plan.inputs.mpi.vendor} {the_plan.inputs.mpi.version} ({the_plan.inputs.mpi.mpicc})"
             if the_plan.inputs.mpi else "mpi: none (Gloo only)"]
    if the_plan.inputs.device == "gpu":
        cuda = the_plan.inputs.cuda
        lines.append(f"cuda: {cuda.version} ({'from PyPI wheels' if cuda.from_wheels else cuda.home})")
        lines.append(f"nccl: {the_plan.inputs.nccl.version} ({the_plan.inputs.nccl.source}: {the_plan.inputs.nccl.lib})")
    lines.append(f"glue: {', '.join(the_plan.glue) or 'none'}")
    lines.append(f"include: {':'.join(the_plan.include_dirs)}")
    lines += [f"{k}={v}" for k, v in sorted(the_plan.env.items())]
    lines += [f"note: {n}" for n in the_plan.notes]
    return lines


# --- the wheel -------------------------------------------------------------------

def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def finish_wheel(wheel, inputs, search_path_map, out_dir):
    """Rewrites the wheel's libraries' search paths, adds the build's description; returns the new wheel's path.

    Args:
        search_path_map: directory -> replacement in the libraries' RUNPATH.
    """
    work = tempfile.mkdtemp(prefix="hvd-keras-wheel-")
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(work)
            names = z.namelist()
        for name in names:
            if name.endswith(".so") or ".so." in name:
                _elf.rewrite_search_path(os.path.join(work, name), lambda d: search_path_map.get(d, d))
        info = {"horovod": HOROVOD_VERSION, "key": inputs.key, "built": time.strftime("%Y-%m-%d"),
                **json.loads(json.dumps(dataclasses.asdict(inputs)))}
        with open(os.path.join(work, "horovod", BUILD_INFO), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        if f"horovod/{BUILD_INFO}" not in names:
            names.append(f"horovod/{BUILD_INFO}")
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for name in names:
            if name == record:
                continue
            with open(os.path.join(work, name), "rb") as f:
                data = f.read()
            rows.append(f"{name},{_record_hash(data)},{len(data)}")
        rows.append(f"{record},,")
        with open(os.path.join(work, record), "w") as f:
            f.write("\n".join(rows) + "\n")
        out = os.path.join(out_dir, os.path.basename(wheel))
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name in names:
                z.write(os.path.join(work, name), name)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wheel_search_paths(wheel):
    """{library name: its RUNPATH list} for every shared library in a wheel (what the tests check)."""
    found = {}
    with tempfile.TemporaryDirectory() as work, zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(".so") or ".so." in name:
                path = z.extract(name, work)
                found[name] = _elf.search_path(path)
    return found


def check_search_paths(wheel, forbidden):
    """Fails when a library of the wheel searches a directory under one of `forbidden` (the building environment)."""
    for name, dirs in wheel_search_paths(wheel).items():
        for d in dirs:
            if any(d == f or d.startswith(f.rstrip(os.sep) + os.sep) for f in forbidden):
                raise BuildError(f"{name} would load libraries from {d}, inside the environment that built it, so "
                                 "another environment could not reuse this build. HINT: this is a bug in "
                                 "hvd-keras build-horovod; please report it with the build log.")


# --- running it ------------------------------------------------------------------

def cache_root(environ=None):
    environ = os.environ if environ is None else environ
    return environ.get("HVD_KERAS_CACHE") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hvd_keras")


def cached_wheel(directory):
    wheels = sorted(glob.glob(os.path.join(directory, "horovod-*.whl")))
    return wheels[0] if wheels else None


def say(message, stream=None):
    print(f"{_PREFIX} {message}", file=stream or sys.stdout, flush=True)


_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


def _compile(cmd, env, log_path, started):
    """Runs the build, printing a line per 10% of cmake's progress; returns (exit code, first error line)."""
    shown, first_error = -10, None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        for line in proc.stdout:
            log.write(line)
            match = _PROGRESS.match(line.strip())
            if match and int(match.group(1)) >= shown + 10:
                shown = int(match.group(1)) // 10 * 10
                say(f"{shown:3d}% compiled ({time.monotonic() - started:.0f} s)")
            if first_error is None and re.search(r": (fatal )?error: |undefined reference|CMake Error", line):
                first_error = line.strip()
        return proc.wait(), first_error


def _ensure_build_tools(python, environ):
    """setuptools and wheel in the environment (no build isolation), and a cmake >= 3.13 (PyPI's if none)."""
    missing = [m for m in ("setuptools", "wheel")
               if subprocess.run([python, "-c", f"import {m}"], capture_output=True).returncode != 0]
    cmake = shutil.which("cmake", path=environ["PATH"])
    version = re.search(r"version (\d+)\.(\d+)", _run_text([cmake, "--version"]) if cmake else "")
    if version is None or (int(version.group(1)), int(version.group(2))) < (3, 13):
        missing.append("cmake")
    if missing:
        say(f"installing build tools into this environment: {' '.join(missing)}")
        subprocess.run([python, "-m", "pip", "install", "-q", *missing], check=True)


def _link_nccl(nccl, directory):
    """A directory with `libnccl.so` -> NCCL's library, for cmake's find_library; None when NCCL's own has one."""
    if os.path.exists(os.path.join(nccl.lib, "libnccl.so")):
        return None
    target = sorted(glob.glob(os.path.join(nccl.lib, "libnccl.so.*")))[0]
    os.makedirs(directory, exist_ok=True)
    os.symlink(target, os.path.join(directory, "libnccl.so"))
    return directory


def build(device, python=sys.executable, environ=None, cache=None, use_cache=True, cuda_from_wheels=False,
          dry_run=False, jobs=None):
    """Builds (or takes from the cache) horovod for this environment and installs it; returns the wheel's path."""
    environ = dict(os.environ if environ is None else environ)
    bindir = os.path.dirname(python)
    environ["PATH"] = bindir + os.pathsep + environ.get("PATH", "")
    inputs = probe(device, python, environ, cuda_from_wheels)
    entry = os.path.join(cache or cache_root(environ), inputs.key)
    with tempfile.TemporaryDirectory(prefix="hvd-keras-build-") as tmp:
        wheel = cached_wheel(entry) if use_cache and not dry_run else None
        if wheel:
            say(f"using the cached build {wheel}")
        else:
            building = not dry_run
            cuda_home = assemble_cuda_from_wheels(python, inputs.tensorflow.site, os.path.join(tmp, "cuda")) \
                if inputs.cuda and inputs.cuda.from_wheels and building else None
            link_dir = _link_nccl(inputs.nccl, os.path.join(tmp, "nccl")) if inputs.nccl else None
            the_plan = plan(inputs, os.path.join(tmp, "shim"), link_dir, cuda_home, jobs)
            if dry_run:
                for line in describe(the_plan):
                    print(line)
                return None
            wheel = _build_wheel(the_plan, python, environ, entry, tmp)
    install(wheel, python, inputs)
    return wheel


def _build_wheel(the_plan, python, environ, entry, tmp):
    inputs = the_plan.inputs
    for note in the_plan.notes:
        say(f"note: {note}")
    _ensure_build_tools(python, environ)
    write_glue(the_plan.glue, the_plan.include_dirs[0])
    env = dict(environ, **the_plan.env)
    env["CPLUS_INCLUDE_PATH"] = os.pathsep.join([*the_plan.include_dirs, *filter(None, [
        environ.get("CPLUS_INCLUDE_PATH")])])
    os.makedirs(entry, exist_ok=True)
    log_path = os.path.join(entry, "build.log")
    say(f"building horovod {HOROVOD_VERSION} for {inputs.key} (3 to 8 minutes on 2 cores; glue: "
        f"{', '.join(the_plan.glue) or 'none'}; log: {log_path})")
    started = time.monotonic()
    code, first_error = _compile([python, "-m", "pip", "wheel", "-v", "--no-cache-dir", "--no-build-isolation",
                                  "--no-deps", f"horovod=={HOROVOD_VERSION}", "-w", os.path.join(tmp, "wheel")],
                                 env, log_path, started)
    if code != 0:
        raise BuildError(f"the horovod build failed: {first_error or 'see the log'}. HINT: read {log_path}; "
                         "`hvd-keras doctor` checks the environment.")
    say(f"built horovod {HOROVOD_VERSION} against {inputs.key} in {time.monotonic() - started:.0f} s")
    built = cached_wheel(os.path.join(tmp, "wheel"))
    replace = {}
    if inputs.nccl is not None:
        final = (os.path.join("$ORIGIN", os.path.relpath(inputs.nccl.lib, os.path.join(
            inputs.tensorflow.site, "horovod", "tensorflow"))) if inputs.nccl_relative else inputs.nccl.lib)
        replace = {the_plan.env["HOROVOD_NCCL_LIB"]: final, inputs.nccl.lib: final}
    os.makedirs(os.path.join(tmp, "final"))
    finished = finish_wheel(built, inputs, replace, os.path.join(tmp, "final"))
    check_search_paths(finished, [inputs.tensorflow.site, tmp])
    # Into the cache under a temporary name, renamed last: an interrupted build never leaves half a wheel.
    partial = os.path.join(entry, f".partial-{os.getpid()}")
    shutil.copy(finished, partial)
    wheel = os.path.join(entry, os.path.basename(finished))
    os.replace(partial, wheel)
    return wheel


def install(wheel, python, inputs):
    """Installs the wheel and horovod's run-time dependencies; checks what got built."""
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "cloudpickle", "psutil", "pyyaml", "packaging", "cffi"],
                   check=True)
    check = ("import horovod.tensorflow as h; print('HVD_KERAS_BUILT', int(h.mpi_built()), int(h.gloo_built()), "
             "int(bool(h.nccl_built())))")
    proc = subprocess.run([python, "-c", check], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    line = next((l for l in proc.stdout.splitlines() if l.startswith("HVD_KERAS_BUILT")), None)
    if line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"the installed horovod does not import: {last}. HINT: delete {os.path.dirname(wheel)} and "
                         "run hvd-keras build-horovod again.")
    mpi, gloo, nccl = (bool(int(v)) for v in line.split()[1:])
    want = (inputs.mpi is not None, True, inputs.device == "gpu")
    if (mpi, gloo, nccl) != want:
        raise BuildError(f"the installed horovod has MPI={mpi}, Gloo={gloo}, NCCL={nccl}; expected MPI={want[0]}, "
                         f"Gloo=True, NCCL={want[2]}. HINT: delete {os.path.dirname(wheel)} and build again.")
    controllers = "MPI and Gloo" if mpi else "Gloo only"
    say(f"installed horovod {HOROVOD_VERSION} ({controllers}{', NCCL' if nccl else ''}) into {inputs.tensorflow.site}")


def assemble_cuda_from_wheels(python, site, dest, compiler=NVCC_WHEEL_VERSION):
    """A CUDA toolkit directory from PyPI alone, for horovod's kernels against TensorFlow's CUDA 12 wheels.

    No CUDA 12 nvcc exists on PyPI (nvidia-cuda-nvcc-cu12 has ptxas, libnvvm
    and headers only), while the CUDA 13 `nvidia-cuda-nvcc` has a full nvcc.
    So: bin/ and nvvm/ of CUDA 13 (copied: nvcc finds nvcc.profile through
    its real path); include/ with the CUDA 12 headers of TensorFlow's
    `nvidia-cuda-runtime-cu12` and the `nvidia-cuda-cccl-cu12` of the same
    minor (cuda_fp16.h needs its nv/target), then the CUDA 13 compiler's crt/
    (its cudafe++ writes stubs for their macros); lib64/ with the CUDA 12
    libcudart. Kernels built so need a driver for CUDA 13 (>= 580) and
    cannot target sm_70.
    """
    runtime = os.path.join(site, "nvidia", "cuda_runtime")
    if not os.path.isfile(os.path.join(runtime, "include", "cuda_runtime.h")):
        raise BuildError(f"--cuda-from-wheels needs nvidia-cuda-runtime-cu12 (TensorFlow's and-cuda extra). Received: "
                         f"no {runtime}/include/cuda_runtime.h. HINT: pip install 'tensorflow[and-cuda]' first.")
    version = subprocess.run([python, "-c", "import importlib.metadata as m; "
                              "print(m.version('nvidia-cuda-runtime-cu12'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    minor = ".".join(version.split(".")[:2])
    say(f"assembling a CUDA toolkit from PyPI: nvcc {compiler}, CUDA {minor} headers")
    wheels = os.path.join(os.path.dirname(dest), "cuda-wheels")
    # --no-deps: nvcc's own dependencies are unpinned, and a newer cicc emits PTX this ptxas rejects.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--target", os.path.join(wheels, "cu13"),
                    f"nvidia-cuda-nvcc=={compiler}", f"nvidia-nvvm=={compiler}",
                    f"nvidia-cuda-crt=={compiler}"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--target", os.path.join(wheels, "cccl"),
                    f"nvidia-cuda-cccl-cu12=={minor}.*"], check=True)
    cu13 = os.path.join(wheels, "cu13", "nvidia", "cu13")
    target = os.path.join(dest, "targets", f"{platform.machine()}-linux")
    include, lib = os.path.join(target, "include"), os.path.join(target, "lib")
    shutil.copytree(os.path.join(cu13, "bin"), os.path.join(dest, "bin"))
    shutil.copytree(os.path.join(cu13, "nvvm"), os.path.join(dest, "nvvm"))
    shutil.copytree(os.path.join(runtime, "include"), include)
    cccl = next(p for p in glob.glob(os.path.join(wheels, "cccl", "**", "include"), recursive=True)
                if "cuda_cccl" in p)
    shutil.copytree(cccl, include, dirs_exist_ok=True)
    shutil.copytree(os.path.join(cu13, "include"), include, dirs_exist_ok=True)
    shutil.copytree(os.path.join(runtime, "lib"), lib)
    versioned = sorted(n for n in os.listdir(lib) if n.startswith("libcudart.so."))[0]
    os.symlink(versioned, os.path.join(lib, "libcudart.so"))
    os.symlink(os.path.join("targets", f"{platform.machine()}-linux", "include"), os.path.join(dest, "include"))
    os.symlink(os.path.join("targets", f"{platform.machine()}-linux", "lib"), os.path.join(dest, "lib64"))
    if nvcc_version(dest) == "unknown":
        raise BuildError(f"the assembled nvcc in {dest} does not run. HINT: pass a CUDA toolkit instead "
                         "(HOROVOD_CUDA_HOME).")
    return dest


def detect_device(environ=None):
    """"gpu" when `nvidia-smi -L` lists a GPU, else "cpu"."""
    environ = os.environ if environ is None else environ
    smi = shutil.which("nvidia-smi", path=environ.get("PATH", ""))
    return "gpu" if smi and re.search(r"^GPU \d", _run_text([smi, "-L"]), re.M) else "cpu"
