"""`hvd-keras build-horovod`: its decisions (cache key, plan, glue, toolkit and NCCL search), the ELF search path
rewrite on real libraries, and the horovod this suite runs on (built by it) checked with readelf."""

import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from hvd_keras import _elf, horovod_build
from hvd_keras.horovod_build import MPI, BuildError, BuildInputs, Cuda, Nccl, TensorFlow

SITE = "/envs/a/lib/python3.11/site-packages"


def _inputs(**changes):
    base = BuildInputs(
        python="3.11", machine="x86_64", device="cpu",
        tensorflow=TensorFlow(version="2.21.0", include=f"{SITE}/tensorflow/include", lib=f"{SITE}/tensorflow",
                              site=SITE),
        mpi=MPI(vendor="openmpi", version="4.1.4", mpicc="/usr/bin/mpicc"),
        compiler="c++ (Debian 12.2.0-14) 12.2.0", libc="glibc-2.36")
    return dataclasses.replace(base, **changes)


def _gpu(**changes):
    gpu = dict(device="gpu", tensorflow=TensorFlow("2.21.0", f"{SITE}/tensorflow/include", f"{SITE}/tensorflow",
                                                   cuda="12.5.1", site=SITE),
               cuda=Cuda(home="/usr/local/cuda-12.5", version="12.5"),
               nccl=Nccl(include=f"{SITE}/nvidia/nccl/include", lib=f"{SITE}/nvidia/nccl/lib", version="2.21.5",
                         source="wheel"))
    return _inputs(**{**gpu, **changes})


def test_cache_key_changes_with_everything_the_binary_depends_on():
    base = _inputs()
    assert base.key.startswith("horovod0.28.1-tf2.21.0-py3.11-x86_64-cpu-openmpi4.1.4-")
    variants = [
        _inputs(python="3.12"), _inputs(machine="aarch64"),
        _inputs(tensorflow=dataclasses.replace(base.tensorflow, version="2.20.0")),
        _inputs(tensorflow=dataclasses.replace(base.tensorflow, cuda="12.5.1")),
        _inputs(mpi=None), _inputs(mpi=MPI("mpich", "4.1.4", "/usr/bin/mpicc")),
        _inputs(mpi=MPI("openmpi", "4.1.6", "/usr/bin/mpicc")),
        _inputs(mpi=MPI("openmpi", "4.1.4", "/opt/openmpi-4.1.4/bin/mpicc")),
        _inputs(compiler="c++ 13.2.0"), _inputs(libc="glibc-2.39"), _gpu(),
    ]
    keys = {v.key for v in variants} | {base.key}
    assert len(keys) == len(variants) + 1
    gpu = _gpu()
    gpu_variants = [
        _gpu(cuda=Cuda("/usr/local/cuda-12.4", "12.4")),
        _gpu(cuda=Cuda(None, "13.0", from_wheels=True)),
        _gpu(nccl=dataclasses.replace(gpu.nccl, version="2.23.4")),
        _gpu(nccl=Nccl("/opt/nccl/include", "/opt/nccl/lib", "2.21.5", "NCCL_HOME")),
        _gpu(nccl=Nccl("/opt/nccl2/include", "/opt/nccl2/lib", "2.21.5", "NCCL_HOME")),
    ]
    assert len({v.key for v in gpu_variants} | {gpu.key}) == len(gpu_variants) + 1
    assert "nvcc12.5" in gpu.key and "nccl2.21.5-wheel" in gpu.key


def test_cache_key_is_the_same_in_another_environment():
    # The NCCL wheel is found relative to horovod, TensorFlow is loaded before
    # horovod: where the environment lies is not part of the binary.
    other = "/home/u/venv/lib/python3.11/site-packages"
    moved = _gpu(tensorflow=TensorFlow("2.21.0", f"{other}/tensorflow/include", f"{other}/tensorflow", cuda="12.5.1",
                                       site=other),
                 nccl=Nccl(f"{other}/nvidia/nccl/include", f"{other}/nvidia/nccl/lib", "2.21.5", "wheel"))
    assert moved.key == _gpu().key and moved.nccl_relative
    # The CUDA toolkit is only compiled with: its place does not matter, its version does.
    assert _gpu(cuda=Cuda("/opt/cuda-12.5", "12.5")).key == _gpu().key


def test_plan_without_mpi_builds_gloo_only_and_says_so(tmp_path):
    plan = horovod_build.plan(_inputs(mpi=None), str(tmp_path / "shim"))
    assert plan.env["HOROVOD_WITHOUT_MPI"] == "1" and "HOROVOD_WITH_MPI" not in plan.env
    assert plan.env["HOROVOD_WITH_GLOO"] == "1"
    assert any("Gloo only" in note and "module load openmpi" in note for note in plan.notes)
    with_mpi = horovod_build.plan(_inputs(), str(tmp_path / "shim"))
    assert with_mpi.env["HOROVOD_WITH_MPI"] == "1" and not with_mpi.notes
    assert "HOROVOD_GPU_OPERATIONS" not in with_mpi.env


def test_plan_for_gpus_links_nccl_and_warns_of_a_newer_compiler(tmp_path):
    plan = horovod_build.plan(_gpu(cuda=Cuda(None, "13.0", from_wheels=True)), str(tmp_path / "shim"),
                              nccl_link_dir="/tmp/link", cuda_home="/tmp/cuda")
    assert plan.env["HOROVOD_GPU_OPERATIONS"] == "NCCL" and plan.env["HOROVOD_NCCL_LINK"] == "SHARED"
    assert plan.env["HOROVOD_NCCL_LIB"] == "/tmp/link" and plan.env["HOROVOD_CUDA_HOME"] == "/tmp/cuda"
    assert any("driver >= 580" in note for note in plan.notes)
    same_major = horovod_build.plan(_gpu(), str(tmp_path / "shim"))
    assert not same_major.notes


def _tf_tree(root, xla_builder, bundled):
    include = root / "include"
    if xla_builder:
        (include / "tensorflow/compiler/xla/client").mkdir(parents=True)
        (include / "tensorflow/compiler/xla/client/xla_builder.h").write_text("")
    if bundled:
        (include / "external/highwayhash/highwayhash").mkdir(parents=True)
        (include / "external/highwayhash/highwayhash/arch_specific.h").write_text("")
        (include / "external/farmhash_archive/src").mkdir(parents=True)
        (include / "external/farmhash_archive/src/farmhash.h").write_text("")
    include.mkdir(exist_ok=True)
    return TensorFlow("2.x", str(include), str(root), site=str(root))


def test_glue_and_bundled_headers_are_decided_from_tensorflows_files(tmp_path):
    old = _tf_tree(tmp_path / "old", xla_builder=True, bundled=False)
    assert horovod_build.glue_for(old, "cpu") == [] and horovod_build.bundled_header_dirs(old) == []
    new = _tf_tree(tmp_path / "new", xla_builder=False, bundled=True)
    assert horovod_build.glue_for(new, "cpu") == ["xla_builder.h"]
    # A GPU build also needs xla::StatusOr and AsGpuStreamValue where TensorFlow lacks them.
    assert horovod_build.glue_for(new, "gpu") == ["xla_builder.h", "xla_statusor.h", "as_gpu_stream_value.h"]
    assert horovod_build.bundled_header_dirs(new) == [
        os.path.join(new.include, "external/highwayhash"), os.path.join(new.include, "external/farmhash_archive/src")]
    shim = tmp_path / "shim"
    horovod_build.write_glue(["xla_builder.h", "xla_statusor.h", "llvm/ADT"], str(shim))
    header = (shim / "tensorflow/compiler/xla/client/xla_builder.h").read_text()
    assert '#include "xla/hlo/builder/xla_builder.h"' in header and "using StatusOr = absl::StatusOr<T>" in header
    assert (shim / "llvm/ADT/ArrayRef.h").is_file() and (shim / "llvm/ADT/SmallVector.h").is_file()


def test_the_installed_tensorflow_carries_the_headers_it_includes():
    # The evidence for building without Debian's libhighwayhash-dev/libfarmhash-dev:
    # TensorFlow's wheel ships both, off its include path.
    import tensorflow as tf

    info = TensorFlow(tf.__version__, tf.sysconfig.get_include(), tf.sysconfig.get_lib())
    for directory in horovod_build.bundled_header_dirs(info):
        assert os.path.isdir(directory)
    for header in ("highwayhash/arch_specific.h", "farmhash.h"):
        places = [info.include, *horovod_build.bundled_header_dirs(info)]
        assert any(os.path.isfile(os.path.join(p, header)) for p in places), header


@pytest.mark.parametrize("text,expected", [
    ("mpicc: Open MPI 4.1.4 (Language: C)", ("openmpi", "4.1.4")),
    ("mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/", ("openmpi", "5.0.3")),
    ("mpicc for MPICH version 4.0.2\nUsing built-in specs.", ("mpich", "4.0.2")),
    ("HYDRA build details:\n    Version:                                 4.1.2", ("mpich", "4.1.2")),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619", ("intelmpi", "2021.10")),
    ("MVAPICH2 Version      :\t2.3.7", ("mvapich2", "2.3.7")),
])
def test_mpi_vendor_and_version(text, expected):
    assert horovod_build.parse_mpi_version(text) == expected


def test_mpi_found_on_path_or_absent():
    found = horovod_build.find_mpi()
    assert found.vendor == "openmpi" and re.fullmatch(r"\d+\.\d+\.\d+", found.version)
    assert horovod_build.find_mpi({"PATH": "/nonexistent"}) is None


def _toolkit(path):
    (path / "bin").mkdir(parents=True)
    (path / "include").mkdir()
    nvcc = path / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.5, V12.5.82'\n")
    nvcc.chmod(0o755)
    (path / "include" / "cuda_runtime.h").write_text("")
    return str(path)


def test_cuda_toolkit_search_order(tmp_path):
    a, b = _toolkit(tmp_path / "a"), _toolkit(tmp_path / "b")
    nowhere = str(tmp_path / "usr-local-cuda")
    assert horovod_build.find_cuda({"CUDA_HOME": a, "PATH": "/usr/bin"}, nowhere) == a
    assert horovod_build.find_cuda({"HOROVOD_CUDA_HOME": b, "CUDA_HOME": a, "PATH": "/usr/bin"}, nowhere) == b
    # The toolkit of the nvcc on PATH, through a symbolic link as module systems make.
    (tmp_path / "links").mkdir()
    os.symlink(os.path.join(b, "bin", "nvcc"), tmp_path / "links" / "nvcc")
    assert horovod_build.find_cuda({"PATH": str(tmp_path / "links")}, nowhere) == b
    assert horovod_build.nvcc_version(b) == "12.5"


def test_missing_or_invalid_cuda_toolkit_is_one_line_naming_the_fixes(tmp_path):
    with pytest.raises(BuildError) as e:
        horovod_build.find_cuda({"CUDA_HOME": str(tmp_path / "nothing"), "PATH": "/usr/bin"}, str(tmp_path / "no"))
    assert "no CUDA toolkit found" in str(e.value) and "--cuda-from-wheels" in str(e.value)
    assert "--cpu" in str(e.value) and "\n" not in str(e.value)
    good = _toolkit(tmp_path / "good")
    with pytest.raises(BuildError, match="HOROVOD_CUDA_HOME is not a CUDA toolkit"):
        horovod_build.find_cuda({"HOROVOD_CUDA_HOME": str(tmp_path / "typo"), "CUDA_HOME": good, "PATH": ""})


def _nccl(root, version=(2, 21, 5), unversioned=False):
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "include" / "nccl.h").write_text(
        "#define NCCL_MAJOR {}\n#define NCCL_MINOR {}\n#define NCCL_PATCH {}\n".format(*version))
    (root / "lib" / ("libnccl.so" if unversioned else "libnccl.so.2")).write_text("")
    return str(root)


def test_nccl_search_order(tmp_path):
    wheel, home = _nccl(tmp_path / "wheel"), _nccl(tmp_path / "home", (2, 23, 4))
    system = tmp_path / "sys"
    _nccl(system, (2, 18, 1))
    found = horovod_build.find_nccl({}, wheel=wheel, system_dirs=(str(system),))
    assert (found.source, found.version, found.lib) == ("wheel", "2.21.5", os.path.join(wheel, "lib"))
    found = horovod_build.find_nccl({"NCCL_HOME": home}, wheel=wheel, system_dirs=(str(system),))
    assert (found.source, found.version) == ("NCCL_HOME", "2.23.4")
    found = horovod_build.find_nccl({}, wheel=None, system_dirs=(str(system),))
    assert (found.source, found.version) == ("system", "2.18.1")
    with pytest.raises(BuildError, match="NCCL_HOME has no NCCL"):
        horovod_build.find_nccl({"NCCL_HOME": str(tmp_path / "typo")}, wheel=wheel)
    with pytest.raises(BuildError, match="no NCCL found"):
        horovod_build.find_nccl({}, wheel=None, system_dirs=(str(tmp_path / "none"),))


def test_nccl_with_only_the_versioned_library_gets_a_link_outside_the_environment(tmp_path):
    nccl = horovod_build.find_nccl({}, wheel=_nccl(tmp_path / "wheel"))
    link_dir = horovod_build._link_nccl(nccl, str(tmp_path / "link"))
    assert os.readlink(os.path.join(link_dir, "libnccl.so")).endswith("libnccl.so.2")
    assert not os.path.exists(os.path.join(nccl.lib, "libnccl.so"))  # the environment is left as it was
    assert horovod_build._link_nccl(horovod_build.find_nccl({}, wheel=_nccl(tmp_path / "w2", unversioned=True)),
                                    str(tmp_path / "link2")) is None


def _shared_library(tmp_path, runpath):
    source = tmp_path / "lib.c"
    source.write_text("int answer(void) { return 42; }\n")
    out = tmp_path / "libanswer.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(source), f"-Wl,-rpath,{runpath}",
                    "-Wl,--enable-new-dtags"], check=True)
    return str(out)


def _readelf_runpath(path):
    match = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]",
                      subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout)
    return match.group(1) if match else None


def test_search_path_rewrite_on_a_real_library(tmp_path):
    wheel_nccl = "/home/someone/venv/lib/python3.11/site-packages/nvidia/nccl/lib"
    lib = _shared_library(tmp_path, f"{wheel_nccl}:/usr/lib/x86_64-linux-gnu/openmpi/lib")
    assert _elf.search_path(lib) == [wheel_nccl, "/usr/lib/x86_64-linux-gnu/openmpi/lib"]
    new = _elf.rewrite_search_path(lib, lambda d: "$ORIGIN/../../nvidia/nccl/lib" if d == wheel_nccl else d)
    assert new == ["$ORIGIN/../../nvidia/nccl/lib", "/usr/lib/x86_64-linux-gnu/openmpi/lib"]
    assert _readelf_runpath(lib) == "$ORIGIN/../../nvidia/nccl/lib:/usr/lib/x86_64-linux-gnu/openmpi/lib"
    import ctypes

    assert ctypes.CDLL(lib).answer() == 42  # still a loadable library
    with pytest.raises(_elf.ElfError, match="can only shrink"):
        _elf.rewrite_search_path(lib, lambda d: d + "/much/longer/than/before/" * 4)
    with pytest.raises(_elf.ElfError, match="not a 64-bit"):
        _elf.search_path(str(tmp_path / "lib.c"))


def test_a_wheel_whose_library_points_into_the_environment_is_refused(tmp_path):
    site = tmp_path / "env" / "site-packages"
    lib = _shared_library(tmp_path, f"{site}/nvidia/nccl/lib")
    wheel = tmp_path / "horovod-0.28.1-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(lib, "horovod/tensorflow/mpi_lib.so")
        z.writestr("horovod-0.28.1.dist-info/RECORD", "")
    with pytest.raises(BuildError, match="inside the environment that built it"):
        horovod_build.check_search_paths(str(wheel), [str(site)])
    # finish_wheel rewrites it relative to the library and records the build.
    inputs = _gpu(tensorflow=TensorFlow("2.21.0", "", "", cuda="12.5.1", site=str(site)),
                  nccl=Nccl(f"{site}/nvidia/nccl/include", f"{site}/nvidia/nccl/lib", "2.21.5", "wheel"))
    out = tmp_path / "out"
    out.mkdir()
    finished = horovod_build.finish_wheel(str(wheel), inputs, {f"{site}/nvidia/nccl/lib": "$ORIGIN/../../nvidia/nccl/lib"},
                                          str(out))
    horovod_build.check_search_paths(finished, [str(site)])
    assert horovod_build.wheel_search_paths(finished) == {"horovod/tensorflow/mpi_lib.so": [
        "$ORIGIN/../../nvidia/nccl/lib"]}
    with zipfile.ZipFile(finished) as z:
        record = z.read("horovod-0.28.1.dist-info/RECORD").decode()
        assert "horovod/hvd_keras_build.json,sha256=" in record and "horovod/tensorflow/mpi_lib.so,sha256=" in record


def test_the_horovod_of_this_suite_has_no_search_path_into_an_environment():
    # Built by `hvd-keras build-horovod` (make setup): readelf on the installed library.
    import horovod

    site = os.path.dirname(os.path.dirname(horovod.__file__))
    libraries = glob.glob(os.path.join(site, "horovod", "tensorflow", "mpi_lib*.so"))
    assert libraries
    for lib in libraries:
        runpath = _readelf_runpath(lib) or ""
        for directory in filter(None, runpath.split(":")):
            assert directory.startswith("$ORIGIN") or "site-packages" not in directory, runpath
            assert not directory.startswith(sys.prefix), runpath
    with open(os.path.join(os.path.dirname(horovod.__file__), horovod_build.BUILD_INFO)) as f:
        info = __import__("json").load(f)
    import tensorflow as tf

    assert info["tensorflow"]["version"] == tf.__version__ and info["key"].startswith("horovod0.28.1-tf")


def test_dry_run_prints_the_plan_and_builds_nothing():
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "hvd-keras"), "build-horovod", "--cpu",
                           "--dry-run"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("key: horovod0.28.1-tf") and "HOROVOD_WITH_MPI=1" in lines
    assert any(line.startswith("include: ") and "external/highwayhash" in line for line in lines)


def test_cuda_from_wheels_without_gpu_flag_is_refused():
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "hvd-keras"), "build-horovod", "--cpu",
                           "--cuda-from-wheels"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "[build-horovod] error: --cuda-from-wheels is for the GPU build. Received: --cuda-from-wheels without --gpu "
        "on a machine without GPUs. HINT: add --gpu."]


def test_gpu_build_needs_a_cuda_tensorflow():
    with pytest.raises(BuildError, match=r"needs TensorFlow built with CUDA.*tensorflow\[and-cuda\]"):
        horovod_build.probe("gpu")


@pytest.fixture
def no_compiler_path(tmp_path):
    return {"PATH": str(tmp_path)}


def test_missing_compiler_is_one_line(no_compiler_path):
    with pytest.raises(BuildError, match="no C\\+\\+ compiler found.*module load gcc"):
        horovod_build._compiler(no_compiler_path)


def test_glue_files_ship_with_the_package():
    # Package data (setup.cfg): the glue must be inside an installed hvd_keras.
    glue = os.path.join(ROOT, "hvd_keras", "horovod_glue")
    assert os.path.samefile(horovod_build.GLUE, glue)
    shipped = {os.path.relpath(p, glue) for p in glob.glob(os.path.join(glue, "**", "*.h"), recursive=True)}
    assert shipped == {"xla_builder.h", "xla_statusor.h", "as_gpu_stream_value.h", "llvm/ADT/ArrayRef.h",
                       "llvm/ADT/SmallVector.h"}
    assert shutil.which("readelf")
