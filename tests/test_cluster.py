"""Slurm node lists, the Slurm environment and launch planning, in one process."""

import os
import shutil
import subprocess

import pytest

from hvd_keras import cli, launcher
from hvd_keras.cluster import SLURMEnvironment, expand_hostlist, expand_tasks_per_node, job_size

FORMS = [
    "node001", "node[001-004,007]", "gpu-a[1-2],gpu-b3", "n[1-3]", "n[01-10]", "n[8-11]",
    "n[098-101]", "a,b,c", "rack[1-2]-n[01-02]", "x[1,3,5]", "x[1-2,5-6,9]", "host-[0-1]",
    "c-[1-2]", "n[0-0]", "a[1-2],b[3-4],c5", "node[1-3],node7", "m[00001-00003]", "z[9-10]x[1-2]",
    "gpu[01-02],cpu[1-3],login", "p[1-1],q[2-3]", "n[1,1]",
]


@pytest.fixture(scope="module")
def scontrol_env(tmp_path_factory):
    if not shutil.which("scontrol"):
        pytest.fail("scontrol is missing: `make test` installs slurm-wlm (tools/bootstrap.sh --with-slurm)")
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    # scontrol reads a configuration even to expand names; a minimal one does.
    conf.write_text("ClusterName=local\nSlurmctldHost=localhost\nNodeName=localhost CPUs=2 State=UNKNOWN\n"
                    "PartitionName=debug Nodes=localhost Default=YES State=UP\n")
    return dict(os.environ, SLURM_CONF=str(conf))


@pytest.mark.parametrize("form", FORMS)
def test_parser_matches_scontrol(form, scontrol_env):
    out = subprocess.run(["scontrol", "show", "hostnames", form], capture_output=True, text=True,
                         env=scontrol_env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert expand_hostlist(form) == out.stdout.split()


@pytest.mark.parametrize("bad", ["", "n[1-", "n1-3]", "n[3-1]", "n[a-b]", "c[1-2]d", "host-[0-1]-ib"])
def test_parser_rejects_malformed_lists(bad, scontrol_env):
    with pytest.raises(ValueError):
        expand_hostlist(bad)
    if "]" in bad and not bad.endswith("]"):  # scontrol refuses text after the last bracket too
        out = subprocess.run(["scontrol", "show", "hostnames", bad], capture_output=True, text=True,
                             env=scontrol_env, timeout=30)
        assert out.returncode != 0 or "Invalid" in out.stdout + out.stderr


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(ValueError, match="SLURM_TASKS_PER_NODE"):
        expand_tasks_per_node("2(3)")


SLURM_VARS = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu-a[1-2],gpu-b3",
              "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NTASKS": "5", "SLURM_PROCID": "3",
              "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}


def test_slurm_environment_reads_the_allocation():
    env = SLURMEnvironment(SLURM_VARS, use_scontrol=False)
    assert env.detect()
    assert env.hosts() == [("gpu-a1", 2), ("gpu-a2", 2), ("gpu-b3", 1)]
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (5, 3, 1, 1)
    assert env.main_address == "gpu-a1"
    assert not SLURMEnvironment({}, use_scontrol=False).detect()
    broken = dict(SLURM_VARS, SLURM_TASKS_PER_NODE="2")
    with pytest.raises(RuntimeError, match="--ntasks-per-node"):
        SLURMEnvironment(broken, use_scontrol=False).hosts()


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text("print('hi')\n")
    return str(path)


def test_plan_single_machine_hostfile_and_slurm(script, tmp_path):
    local = launcher.LaunchConfig(script=script, np=2, controller="gloo")
    p = launcher.plan(local, environ={})
    assert p.hosts == (("localhost", 2),) and p.np == 2
    cmd = launcher.build_command(local, p, python="python")
    assert cmd == ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "python", script]

    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode1 slots=4\nnode2:2\n")
    hf = launcher.LaunchConfig(script=script, hostfile=str(hostfile), controller="mpi")
    p = launcher.plan(hf, environ={})
    assert p.hosts == (("node1", 4), ("node2", 2)) and p.np == 6

    slurm = launcher.LaunchConfig(script=script)
    p = launcher.plan(slurm, environ=SLURM_VARS)
    assert p.np == 5 and launcher.format_hosts(p.hosts) == "gpu-a1:2,gpu-a2:2,gpu-b3:1"


def test_recommended_env_respects_what_the_user_set(script):
    config = launcher.LaunchConfig(script=script, np=1, gpus=True)
    env = launcher.launch_env(config, environ={"HOROVOD_CYCLE_TIME": "5"})
    assert "HOROVOD_CYCLE_TIME" not in env and env["NCCL_DEBUG"] == "WARN"
    assert env["HOROVOD_FUSION_THRESHOLD"] == str(128 * 1024 * 1024)


def test_init_applies_the_launch_defaults_under_any_launcher():
    # horovodrun, mpirun and srun launches never pass through hvd-keras run:
    # hvd_keras.init() sets the same defaults before Horovod and MPI start.
    from hvd_keras import runtime

    environ = {"OMPI_MCA_mpi_yield_when_idle": "0"}
    runtime.apply_recommended_env(environ, gpus=False)
    assert environ["OMPI_MCA_mpi_yield_when_idle"] == "0"  # the user's value wins
    assert environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == "600"
    assert environ["HOROVOD_CYCLE_TIME"] == "0.2" and "NCCL_DEBUG" not in environ
    assert environ["HVD_KERAS_HOROVOD_THREADS"] == "idle"  # Horovod's threads on the cores compute leaves
    on_gpus = {}
    runtime.apply_recommended_env(on_gpus, gpus=True)
    assert on_gpus["HOROVOD_CYCLE_TIME"] == "1" and on_gpus["NCCL_DEBUG"] == "WARN"
    assert on_gpus["HVD_KERAS_HOROVOD_THREADS"] == "normal"  # they launch the GPU's collectives
    assert on_gpus["OMPI_MCA_mpi_yield_when_idle"] == "1"


def test_launch_on_a_gpu_machine_gets_the_gpu_settings_without_gpus_flag(script, monkeypatch):
    config = launcher.LaunchConfig(script=script, np=2)
    on_gpus = launcher.launch_env(config, environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    on_cpus = launcher.launch_env(config, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert on_gpus["HOROVOD_CYCLE_TIME"] == "1" and on_cpus["HOROVOD_CYCLE_TIME"] == "0.2"
    # No nvidia-smi here and no CUDA_VISIBLE_DEVICES: the launcher cannot tell,
    # so the device-specific settings are left to each rank's hvd_keras.init().
    monkeypatch.setattr(launcher.placement, "_nvidia_smi_list", lambda: None)
    unknown = launcher.launch_env(config, environ={})
    assert "HOROVOD_CYCLE_TIME" not in unknown and unknown["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert "HVD_KERAS_HOROVOD_THREADS" not in unknown
    # Each rank's init() decides the thread policy from the devices it sees, never the launching host.
    assert "HVD_KERAS_HOROVOD_THREADS" not in on_gpus and "HVD_KERAS_HOROVOD_THREADS" not in on_cpus


@pytest.mark.parametrize("environ,expected", [
    ({}, 1),                                                            # python train.py
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "4"}, 4),                    # horovodrun --gloo
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, 2),    # mpirun, horovodrun --mpi
    ({"PMI_RANK": "3", "PMI_SIZE": "8"}, 8),                            # Hydra, srun --mpi=pmi2
    ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "1"}, 1),               # srun -n 1 --mpi=pmix
    ({"PMIX_RANK": "0"}, None),                                         # PMIx without Slurm: unknown
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "x"}, None),
    # sbatch's batch shell runs `python train.py` as one process whatever the allocation:
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, 1),
    # srun without --mpi: Slurm's own PMI library may join the tasks (Intel MPI), or not.
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}, 1),
    ({"JSM_NAMESPACE_RANK": "5", "JSM_NAMESPACE_SIZE": "6"}, 6),
    ({"PALS_RANKID": "0"}, None),
    ({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "\u00b2"}, None),  # a digit isdigit() takes but int() refuses
])
def test_job_size_from_the_launchers_variables(environ, expected):
    assert job_size(environ) == expected


def test_a_single_process_keeps_horovods_cycle_time(script):
    # Nothing is negotiated at size 1; the 0.2 ms cycle only wakes the background thread.
    assert launcher.recommended_env(gpus=False, np=1)["HOROVOD_CYCLE_TIME"] == "1"
    assert launcher.recommended_env(gpus=False, np=2)["HOROVOD_CYCLE_TIME"] == "0.2"
    assert launcher.recommended_env(gpus=None, np=1)["HOROVOD_CYCLE_TIME"] == "1"
    assert "HOROVOD_CYCLE_TIME" not in launcher.recommended_env(gpus=None, np=4)
    config = launcher.LaunchConfig(script=script, np=1)
    assert launcher.launch_env(config, environ={"CUDA_VISIBLE_DEVICES": ""}, np=1)["HOROVOD_CYCLE_TIME"] == "1"
    assert launcher.launch_env(config, environ={"CUDA_VISIBLE_DEVICES": ""}, np=2)["HOROVOD_CYCLE_TIME"] == "0.2"


@pytest.mark.parametrize("argv,match", [
    (["run", "-np", "2", "missing.py"], "does not exist"),
    (["run", "-np", "9", "-H", "a:4,b:4", "{script}"], "more than the 8 slots"),
    (["run", "--slurm", "-np", "2", "{script}"], "not inside a Slurm allocation"),
    (["run", "{script}"], "-np is required"),
    (["run", "-np", "2", "-H", "a:x", "{script}"], "bad host"),
])
def test_cli_bad_input_one_line(argv, match, script, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert cli.main([a.format(script=script) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "HINT" in err


def test_cli_malformed_slurm_node_list_without_scontrol(script, capsys, monkeypatch):
    # No scontrol on PATH: our own parser reads the list and must fail in one line.
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2")
    assert cli.main(["run", "--slurm", "-np", "2", "--dry-run", script]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "node[1-" in err and "HINT" in err


def test_cli_dry_run_prints_the_command(script, capsys, monkeypatch):
    for key in launcher.recommended_env(gpus=True):  # an earlier hvd_keras.init() in this process set them
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "2")
    assert cli.main(["run", "-np", "2", "--gloo", "--dry-run", script, "--epochs", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("HOROVOD_FUSION_THRESHOLD=134217728 ") and "HOROVOD_CYCLE_TIME" not in line
    assert "OMPI_MCA_mpi_yield_when_idle=1 " in line
    assert line.endswith(f"horovodrun -np 2 -H localhost:2 --gloo {os.sys.executable} {script} --epochs 3")


# --- elastic jobs inside an allocation: the discovery of usable nodes --------------------------------------

SINFO = """node001 allocated
node002 draining
node003 mixed
node004 down*
node005 allocated*
node006 completing
node007 idle~
node008 mixed-
node009 drained
node010 allocated
node010 draining
"""


def test_usable_nodes_from_sinfo_states():
    from hvd_keras.cluster.discovery import usable_nodes

    # Listed twice (two partitions): usable only when usable in both lines.
    assert usable_nodes(SINFO) == {"node001", "node003", "node006", "node008"}


def test_discover_hosts_keeps_the_allocations_usable_nodes_in_order(capsys, monkeypatch):
    from hvd_keras.cluster import discovery
    from hvd_keras.cluster.discovery import slurm_hosts

    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[001-003]", "SLURM_TASKS_PER_NODE": "4(x3)"}
    assert slurm_hosts(environ, sinfo_text=SINFO) == [("node001", 4), ("node003", 4)]
    # sinfo unreachable: every node kept (a slurmctld that does not answer for a moment must not shrink the job).
    monkeypatch.setattr(discovery, "_sinfo", lambda nodelist: None)
    assert slurm_hosts(environ) == [("node001", 4), ("node002", 4), ("node003", 4)]
    monkeypatch.setattr(os, "environ", environ)
    assert cli.main(["discover-hosts"]) == 0
    assert capsys.readouterr().out == "node001:4\nnode002:4\nnode003:4\n"
    monkeypatch.setattr(os, "environ", {})
    assert cli.main(["discover-hosts"]) == 2
    err = capsys.readouterr().err
    assert "no Slurm allocation" in err and "HINT:" in err and err.count("\n") == 1


def test_elastic_run_inside_an_allocation_discovers_its_nodes(script, capsys):
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[001-002]", "SLURM_TASKS_PER_NODE": "2(x2)",
               "PATH": os.environ["PATH"]}
    config = launcher.LaunchConfig(script=script, elastic=True, min_np=1)
    config = launcher.with_elastic_defaults(config, environ)
    assert (config.np, config.min_np, config.max_np) == (4, 1, 4)
    cmd = launcher.build_elastic_command(config, python="python")
    assert cmd[:8] == ["horovodrun", "-np", "4", "--min-np", "1", "--max-np", "4", "--host-discovery-script"]
    assert cmd[8].endswith(" -m hvd_keras.cluster.discovery")
    # A script of the user's own, or --no-slurm, wins; outside an allocation nothing changes.
    own = launcher.LaunchConfig(script=script, elastic=True, min_np=1, discovery_script="./hosts.sh")
    assert launcher.with_elastic_defaults(own, environ) == own
    off = launcher.LaunchConfig(script=script, elastic=True, min_np=1, slurm="off")
    assert launcher.with_elastic_defaults(off, environ) == off
    assert launcher.with_elastic_defaults(config, {}) == config
