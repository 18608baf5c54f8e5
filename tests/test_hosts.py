"""Several hosts, for real: network namespaces joined by a bridge, sshd on each, a 2-node Slurm on them.

Two ranks on two hosts (node1, node2), launched from a third (head) as a
user logged in there would: the topology every launcher gives, training
equal to one host, the checks hvd_keras makes across hosts, and faults (a
rank killed, a link cut) that must end every rank promptly, with a line
that names the host and the rank. Needs root (namespaces); skipped, with the
reason, elsewhere.
"""

import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, load_ranks
from netns_hosts import Hosts, unavailable_reason
from slurm_hosts import SlurmOnHosts
from test_equivalence import GLOBAL_BATCH, STEPS, _single

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

BIN = os.path.dirname(sys.executable)
SCRIPTS = os.path.join(ROOT, "tests", "scripts")
ENV = (f"export PATH={BIN}:$PATH PYTHONPATH={SCRIPTS}:{ROOT} TF_CPP_MIN_LOG_LEVEL=3 OMP_NUM_THREADS=1 "
       "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; ")
# horovodrun probes every host's interfaces over ssh (about a minute) unless told which to use.
NIC = "--network-interface eth0"


@pytest.fixture(scope="module")
def hosts():
    h = Hosts().start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def slurm(hosts):
    s = SlurmOnHosts(hosts).start()
    yield s


@pytest.fixture
def shared(hosts, request):
    # A directory every host sees (the checkout's file system), fresh per test.
    path = os.path.join(hosts.shared, request.node.name.replace("[", "-").replace("]", ""))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def on(hosts, host, command, timeout=300, check=True):
    proc = hosts.run(host, ["bash", "-c", ENV + command], cwd=SCRIPTS, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"on {host}: {command} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{_errors(proc.stderr)}")
    return proc


def _errors(text):
    return "\n".join(line for line in text.splitlines()[-80:] if "oneDNN" not in line and "absl" not in line)


def _two_hosts(out):
    r0, r1 = load_ranks(out, 2)
    for r, rank in ((r0, 0), (r1, 1)):
        assert int(r["my_rank"]) == rank and int(r["size"]) == 2
        assert int(r["local_rank"]) == 0 and int(r["local_size"]) == 1
        assert int(r["cross_size"]) == 2 and int(r["cross_rank"]) == rank
    assert {str(r0["hostname"]), str(r1["hostname"])} == {"node1", "node2"}
    assert str(r0["identity"]) != str(r1["identity"])
    return r0, r1


# --- launching --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("launch", [
    f"horovodrun -np 2 -H node1:1,node2:1 --gloo {NIC} python topology.py",
    f"horovodrun -np 2 -H node1:1,node2:1 --mpi {NIC} python topology.py",
    "mpirun -np 2 -H node1,node2 -x PATH -x PYTHONPATH -x TF_CPP_MIN_LOG_LEVEL -mca btl_tcp_if_include eth0 "
    "-mca oob_tcp_if_include eth0 python topology.py",
    f"hvd-keras run -H 10.77.0.2:1,10.77.0.3:1 --mpi {NIC} topology.py",
    f"hvd-keras run --hostfile HOSTFILE --gloo {NIC} topology.py",
], ids=["horovodrun-gloo", "horovodrun-mpi", "mpirun", "hvd-keras-run-by-address", "hvd-keras-run-hostfile"])
def test_two_ranks_on_two_hosts_launched_from_a_head_host(hosts, shared, launch):
    hostfile = os.path.join(shared, "hostfile")
    with open(hostfile, "w") as f:
        f.write("node1 slots=1\nnode2 slots=1\n")
    on(hosts, "head", f"{launch.replace('HOSTFILE', hostfile)} --out {shared}")
    _two_hosts(shared)


def test_dry_run_prints_the_launch_without_starting_it(hosts, shared):
    proc = on(hosts, "head", f"hvd-keras run -H node1:1,node2:1 --gloo {NIC} --dry-run topology.py --out {shared}")
    line = proc.stdout.strip().splitlines()[-1]
    assert "horovodrun -np 2 -H node1:1,node2:1 --gloo --network-interface eth0" in line
    assert "OMPI_MCA_oob_tcp_keepalive_time=20" in line and not os.listdir(shared)


def test_training_on_two_hosts_equals_one_process(hosts, shared, tmp_path_factory):
    common = ["--global-batch", str(GLOBAL_BATCH), "--steps", str(STEPS), "--optimizer", "adam"]
    single = _single(str(tmp_path_factory.getbasetemp()), *common)
    on(hosts, "head", f"horovodrun -np 2 -H node1:1,node2:1 --gloo {NIC} python train_equivalence.py "
                      f"--out {shared} {' '.join(common)}")
    r0, r1 = load_ranks(shared, 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - single["weights"]).max() < 1e-5


def test_gpu_check_finds_this_host_by_address(hosts, shared):
    # node1 with one GPU (nvidia-smi's listing), asked for 2 processes on it by address.
    fake = os.path.join(shared, "bin")
    os.makedirs(fake)
    with open(os.path.join(fake, "nvidia-smi"), "w") as f:
        f.write("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    os.chmod(os.path.join(fake, "nvidia-smi"), 0o755)
    proc = on(hosts, "node1", f"export PATH={fake}:$PATH; hvd-keras run --gpus -H 10.77.0.2:2,10.77.0.3:2 "
                              f"--dry-run topology.py", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "hvd-keras: error: --gpus: 2 processes would run on this host but it has 1 GPU(s), so processes would "
        "share a GPU. HINT: give this host (10.77.0.2) at most 1 slots, one process per GPU: "
        "-H 10.77.0.2:1,10.77.0.3:2.")
    on(hosts, "node1", f"export PATH={fake}:$PATH; hvd-keras run --gpus -H 10.77.0.2:1,10.77.0.3:2 "
                       f"--dry-run topology.py")


def test_hosts_with_one_hostname_keep_apart(hosts):
    hosts.set_hostname("node2", "node1")
    try:
        keys = [on(hosts, h, "python -c 'from hvd_keras.cluster import host; i = host.identity(); "
                             "print(i.name, i.key)'").stdout.split() for h in ("node1", "node2")]
    finally:
        hosts.set_hostname("node2", "node2")
    assert keys[0][0] == keys[1][0] == "node1" and keys[0][1] != keys[1][1]


def test_resume_from_a_directory_only_one_node_holds_is_refused(hosts, shared):
    # A checkpoint in node2's own /tmp; the resumed job puts rank 0 on node1, which sees none there.
    on(hosts, "node2", f"python checkpoint_resume.py --work {shared}/w1 --out {shared}/first --ckpt /tmp/ckpt "
                       "--epochs 1")
    assert os.listdir(hosts.local_path("node2", "/tmp/ckpt"))
    proc = on(hosts, "head", f"horovodrun -np 2 -H node1:1,node2:1 --gloo {NIC} python checkpoint_resume.py "
                             f"--work {shared}/w2 --out {shared}/again --ckpt /tmp/ckpt --epochs 2 --resume yes",
              check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "differs between hosts" in line]
    assert lines and all("node1 (rank 0) sees no checkpoint" in line and "node2 (rank 1) sees ckpt-" in line
                         for line in lines)
    assert not os.path.exists(f"{shared}/again/rank0.npz")  # no training started over


# --- Slurm ------------------------------------------------------------------------------------------------

def test_srun_pmix_across_two_nodes(hosts, slurm, shared):
    slurm.run(["srun", "-N", "2", "-n", "2", "--mpi=pmix", "--kill-on-bad-exit=1", "bash", "-c",
               ENV + f"cd {SCRIPTS} && python topology.py --out {shared}"], timeout=300)
    _two_hosts(shared)


def test_slurm_environment_inside_a_two_node_allocation(hosts, slurm):
    code = ("from hvd_keras.cluster import SLURMEnvironment as S; e = S(); "
            "print(e.detect(), e.hosts(), e.world_size(), e.node_rank())")
    out = slurm.run(["srun", "-N", "2", "-n", "2", "bash", "-c", ENV + f"python -c '{code}'"], timeout=120)
    lines = sorted(out.stdout.strip().splitlines())
    assert lines == ["True [('node1', 1), ('node2', 1)] 2 0", "True [('node1', 1), ('node2', 1)] 2 1"]


def test_cpu_multi_node_batch_script_both_lines(hosts, slurm, shared):
    # launch/multi_node.sbatch as a CPU cluster runs it: no --gres, one task per node, and both of its lines.
    template = open(os.path.join(ROOT, "launch", "multi_node.sbatch")).read()
    script = (template.replace("#SBATCH --gres=gpu:4\n", "").replace("--ntasks-per-node=4", "--ntasks-per-node=1")
              .replace("--cpus-per-task=8", "--cpus-per-task=1")
              .replace("# .venv/bin/hvd-keras run --mpi --gpus", ".venv/bin/hvd-keras run --mpi --network-interface eth0"))
    path = os.path.join(shared, "cpu_multi_node.sbatch")
    with open(path, "w") as f:
        f.write(script)
    job = slurm.sbatch([f"--output={shared}/job.out", path, "--out", f"{shared}/run"],
                       env={"HVD_KERAS_PYTHON": sys.executable, "HVD_KERAS_SCRIPT": "tests/scripts/topology.py",
                            "PYTHONPATH": f"{SCRIPTS}:{ROOT}", "TF_CPP_MIN_LOG_LEVEL": "3",
                            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}, cwd=ROOT)
    assert slurm.wait(job, timeout=400) == "COMPLETED", open(f"{shared}/job.out").read()[-3000:]
    _two_hosts(f"{shared}/run")


def test_a_preempted_job_requeues_and_resumes_exactly_across_two_nodes(hosts, slurm, shared):
    # launch/requeue.sbatch on 2 nodes, one task each: SIGUSR1 to the batch shell, every rank stops after the
    # same step, rank 0 checkpoints, the job requeues itself and resumes; the result equals a run never stopped.
    env = {"HVD_KERAS_PYTHON": sys.executable, "HVD_KERAS_SCRIPT": "tests/scripts/preempt.py",
           "PYTHONPATH": f"{SCRIPTS}:{ROOT}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["--epochs", "3", "--shuffle", "no", "--seed", "7"]
    slurm.run(["srun", "-N", "2", "-n", "2", "--mpi=pmix", "bash", "-c",
               ENV + f"cd {SCRIPTS} && python preempt.py --out {shared}/plain --weights {shared}/plain-w "
               + " ".join(args)], timeout=300)
    template = open(os.path.join(ROOT, "launch", "requeue.sbatch")).read()
    path = os.path.join(shared, "requeue2.sbatch")
    with open(path, "w") as f:
        f.write(template.replace("#SBATCH --nodes=1", "#SBATCH --nodes=2").replace(
            "--ntasks-per-node=2", "--ntasks-per-node=1"))
    out = os.path.join(shared, "job.out")
    job = slurm.sbatch([f"--output={out}", path, "--out", f"{shared}/run", "--weights", f"{shared}/run-w", *args],
                       env=env, cwd=ROOT)
    deadline = time.monotonic() + 240
    while not os.path.exists(f"{shared}/run/pid1"):
        assert time.monotonic() < deadline, (open(out).read() if os.path.exists(out) else "") + slurm.logs()
        time.sleep(0.2)
    slurm.run(["scancel", "--batch", "--signal=USR1", str(job)], timeout=30)
    assert slurm.wait(job, timeout=400) == "COMPLETED", open(out).read()[-3000:]
    text = open(out).read()
    assert "preempted; checkpoint written" in text and "run 1 of job" in text and "hvd_keras: resumed from" in text
    plain, (r0, r1) = load_ranks(f"{shared}/plain-w", 2)[0], load_ranks(f"{shared}/run-w", 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - plain["weights"]).max() < 1e-6


def test_an_elastic_batch_job_shrinks_onto_the_nodes_left_when_one_is_drained(hosts, slurm, shared):
    # launch/elastic.sbatch on 2 nodes: horovodrun's elastic driver polls `hvd-keras discover-hosts`, which
    # leaves out a node Slurm reports drained; that node's worker is stopped and training goes on on the other.
    from test_elastic import check_job

    out = os.path.join(shared, "run")
    os.makedirs(out)
    env = {"HVD_KERAS_PYTHON": sys.executable, "HVD_KERAS_SCRIPT": "tests/scripts/elastic_train.py",
           "HVD_KERAS_RUN_ARGS": "--network-interface eth0", "PYTHONPATH": f"{SCRIPTS}:{ROOT}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{BIN}:{os.environ['PATH']}"}
    job = slurm.sbatch([f"--output={shared}/job.out", os.path.join(ROOT, "launch", "elastic.sbatch"),
                        "--out", out, "--epochs", "3", "--pace", "0.1"], env=env, cwd=ROOT)

    def progress():
        try:
            with open(os.path.join(out, "progress")) as f:
                epoch, step, size, _ = f.read().split()
            return int(step), int(size)
        except (OSError, ValueError):
            return 0, 0

    def wait_until(what, condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition(*progress()):
            text = open(f"{shared}/job.out").read() if os.path.exists(f"{shared}/job.out") else ""
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {progress()}\n{text[-4000:]}"
            time.sleep(0.2)

    try:
        wait_until("2 ranks training", lambda step, size: size == 2 and step >= 10, 240)
        drained = time.time()
        slurm.run(["scontrol", "update", "nodename=node2", "state=drain", "reason=hvd_keras-test"])
        wait_until("training on node1 alone", lambda step, size: size == 1, 120)
        assert slurm.wait(job, timeout=300) == "COMPLETED", open(f"{shared}/job.out").read()[-4000:]
    finally:
        slurm.run(["scontrol", "update", "nodename=node2", "state=resume"], check=False)
    text = open(f"{shared}/job.out").read()
    final = check_job(out, 0, text, epochs=3)
    sizes = [size for *_, steps, size in final["ledger"].tolist() for _ in range(steps)]
    assert sizes[0] == 2 and sizes[-1] == 1
    (change,) = json.loads(str(final["recoveries"]))
    assert change["reason"] == "a change of hosts" and change["size"] == 1
    print(f"drain of node2 to the first step on node1 alone: {change['time'] - drained:.1f} s")
    assert change["time"] - drained < 60


# --- faults -----------------------------------------------------------------------------------------------

def _fault(hosts, shared, launch, fault, limit):
    """Starts `launch` on head, waits until both ranks train, applies `fault` to node2; returns (seconds, output)."""
    proc = hosts.popen("head", ["bash", "-c", ENV + launch + f" --out {shared}"], cwd=SCRIPTS,
                       stdout=open(f"{shared}/out.log", "w"), stderr=open(f"{shared}/err.log", "w"))
    try:
        deadline = time.monotonic() + 240
        while not all(os.path.exists(f"{shared}/ready{r}") for r in (0, 1)):
            assert proc.poll() is None, open(f"{shared}/err.log").read()[-3000:]
            assert time.monotonic() < deadline, "the ranks never started training"
            time.sleep(0.2)
        pid = int(open(f"{shared}/ready1").read().split()[0])
        started = time.monotonic()
        if fault == "kill":
            os.kill(pid, 9)
        else:
            hosts.cut("node2")
        try:
            proc.wait(timeout=limit + 60)
        except Exception:
            pass
        seconds = time.monotonic() - started
    finally:
        if fault == "cut":
            hosts.plug("node2")
        if proc.poll() is None:
            proc.kill()
    output = open(f"{shared}/out.log").read() + open(f"{shared}/err.log").read()
    left = [p for h in ("node1", "node2") for p in hosts.pids(h) if _is_rank(p)]
    print(f"{launch.split()[0]} {fault}: every rank ended after {seconds:.1f} s")
    for line in output.splitlines():
        if "hvd-keras:" in line or "has not completed" in line or "lost communication" in line or "noticed" in line:
            print("   ", line[:300])
    return seconds, output, left


def _is_rank(pid):
    try:
        return "train_forever" in open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return False


def _gone(hosts, left):
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        left = [p for p in left if _is_rank(p)]
        time.sleep(0.2)
    return not left


@pytest.mark.parametrize("launch,says", [
    (f"hvd-keras run -H node1:1,node2:1 --gloo {NIC} train_forever.py", "rank 1 on host node2 ended first"),
    (f"hvd-keras run -H node1:1,node2:1 --mpi {NIC} train_forever.py", "process rank 1 with PID"),
], ids=["gloo", "mpi"])
def test_a_killed_remote_rank_ends_every_rank_within_10_s(hosts, shared, launch, says):
    seconds, output, left = _fault(hosts, shared, launch, "kill", 10)
    assert seconds < 10, output[-3000:]
    assert says in output and "node2" in [line for line in output.splitlines() if says in line][0]
    assert _gone(hosts, left)


def test_a_killed_task_ends_an_srun_job_within_10_s(hosts, slurm, shared):
    launch = (f"srun -N 2 -n 2 --mpi=pmix --kill-on-bad-exit=1 bash -c "
              f"'{ENV} cd {SCRIPTS} && python train_forever.py --out {shared}'")
    seconds, output, left = _fault(hosts, shared, launch + " #", "kill", 10)  # _fault's --out is inside
    assert seconds < 10, output[-3000:]
    assert "node2: task 1" in output
    assert _gone(hosts, left)


@pytest.mark.parametrize("controller,says", [
    ("gloo", "Process name:"),                    # Gloo's own 30 s timeout, then horovodrun names the rank
    ("mpi", "has not completed after"),           # hvd_keras's watchdog (30 s), then OpenMPI's keepalive
], ids=["gloo", "mpi"])
def test_a_cut_link_ends_every_rank_within_60_s(hosts, shared, controller, says):
    launch = f"hvd-keras run -H node1:1,node2:1 --{controller} {NIC} train_forever.py"
    seconds, output, left = _fault(hosts, shared, launch, "cut", 60)
    assert seconds < 60, output[-3000:]
    assert says in output, output[-3000:]
    if controller == "mpi":
        line = next(line for line in output.splitlines() if "has not completed after" in line)
        assert "rank 0 on host node1" in line and "HVD_KERAS_STEP_TIMEOUT" in line
    assert _gone(hosts, left)
