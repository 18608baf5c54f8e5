"""GPU placement, decided in one process with patched device lists (no GPU needed)."""

import subprocess
import sys
import types

import pytest
from conftest import worker_env

from hvd_keras import cli, launcher, placement
from hvd_keras.cluster import host
from hvd_keras.runtime import pin_gpu


class FakeConfig:
    """Stands in for tf.config: lists `n` GPUs and records what init() asks of it."""

    def __init__(self, n, initialised=False):
        self.gpus = [types.SimpleNamespace(name=f"/physical_device:GPU:{i}", device_type="GPU")
                     for i in range(n)]
        self.visible = list(self.gpus)
        self.growth = []
        self.initialised = initialised
        self.experimental = types.SimpleNamespace(set_memory_growth=self._growth)

    def list_physical_devices(self, kind=None):
        return list(self.gpus) if kind == "GPU" else []

    def get_visible_devices(self, kind=None):
        return list(self.visible)

    def set_visible_devices(self, device, kind=None):
        if self.initialised:
            raise RuntimeError("Visible devices cannot be modified after being initialized")
        self.visible = [device]

    def _growth(self, device, on):
        self.growth.append((device.name, on))


def _host(n_gpus, local_size, visible=None, host="node1", first_rank=0):
    """What every local rank of one host chooses: [(Placement, FakeConfig)]."""
    out = []
    for local_rank in range(local_size):
        config = FakeConfig(n_gpus)
        cvd = visible(local_rank) if callable(visible) else visible
        env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
        out.append((pin_gpu(config, host, first_rank + local_rank, local_rank, local_size, env), config))
    return out


def test_every_process_sees_all_gpus_takes_its_local_rank():
    """horovodrun -np 8 on an 8-GPU node."""
    ranks = _host(8, 8)
    for local_rank, (p, config) in enumerate(ranks):
        assert p.index == local_rank and config.visible == [config.gpus[local_rank]]
        assert config.growth == [(config.gpus[local_rank].name, True)]
    placement.check_distinct([p for p, _ in ranks])


def test_launcher_gave_each_task_its_own_gpu():
    """srun --gpus-per-task=1: each task sees one GPU, a different one."""
    ranks = _host(1, 4, visible=lambda r: str(r))
    assert [p.index for p, _ in ranks] == [0, 0, 0, 0]
    assert [p.device for p, _ in ranks] == ["0", "1", "2", "3"]
    placement.check_distinct([p for p, _ in ranks])


def test_launcher_gave_uuids():
    ranks = _host(1, 2, visible=lambda r: f"GPU-{r}a5e-uuid")
    placement.check_distinct([p for p, _ in ranks])


def test_fewer_gpus_than_local_ranks_is_an_error_naming_both_ranks():
    ranks = _host(2, 4)  # 4 processes, 2 GPUs, every process sees both
    with pytest.raises(placement.PlacementError) as e:
        placement.check_distinct([p for p, _ in ranks])
    message = str(e.value)
    assert "ranks 0 and 1 on host node1 would share GPU 0" in message
    assert "4 processes run there but rank 1 sees only 2 GPU(s)" in message and "HINT" in message
    assert len(message.splitlines()) == 1


def test_one_gpu_shared_by_two_tasks_is_an_error():
    """Every task told CUDA_VISIBLE_DEVICES=0 (a launcher misconfigured)."""
    with pytest.raises(placement.PlacementError, match="ranks 0 and 1 on host node1 would share GPU 0"):
        placement.check_distinct([p for p, _ in _host(1, 2, visible="0")])


def test_same_gpu_index_on_different_hosts_is_fine():
    a = _host(1, 1, host="node1")
    b = _host(1, 1, host="node2", first_rank=1)
    placement.check_distinct([p for p, _ in a + b])


def test_cpu_only_pins_nothing():
    (p, config), = _host(0, 2)[:1]
    assert p.index is None and p.device is None and config.growth == []
    placement.check_distinct([p for p, _ in _host(0, 2)])


def test_pinning_after_tensorflow_started_is_one_line():
    config = FakeConfig(2, initialised=True)
    with pytest.raises(RuntimeError) as e:
        pin_gpu(config, "node1", 1, 1, 2, {})
    assert "before building a model" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_already_pinned_is_left_alone():
    config = FakeConfig(2, initialised=True)
    config.visible = [config.gpus[1]]
    assert pin_gpu(config, "node1", 1, 1, 2, {}).index == 1


@pytest.mark.parametrize("environ,listing,expected", [
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, None, 3),
    ({"CUDA_VISIBLE_DEVICES": ""}, None, 0),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None, 0),
    ({}, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n", 2),
    ({}, "", 0),
])
def test_visible_gpu_count(environ, listing, expected):
    assert placement.visible_gpu_count(environ, list_gpus=lambda: listing) == expected


def test_launcher_checks_np_against_this_hosts_gpus(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    config = launcher.LaunchConfig(script=str(script), np=8, gpus=True)
    the_plan = launcher.plan(config, environ={})
    launcher.check_gpus(the_plan, gpu_count=8)
    with pytest.raises(launcher.LaunchError) as e:
        launcher.check_gpus(the_plan, gpu_count=4)
    assert "8 processes would run on this host but it has 4 GPU(s)" in str(e.value)
    assert "-np 4" in str(e.value)
    # Remote hosts are checked by init() on each of them, not here.
    remote = launcher.plan(launcher.LaunchConfig(script=str(script), np=8, hosts="n1:4,n2:4"), environ={})
    launcher.check_gpus(remote, gpu_count=0)
    assert launcher.processes_per_host(
        launcher.plan(launcher.LaunchConfig(script=str(script), np=6, hosts="n1:4,n2:4"), environ={})
    ) == [("n1", 4), ("n2", 2)]


def test_cli_gpus_with_too_many_processes_is_one_line(tmp_path, capsys, monkeypatch):
    script = tmp_path / "train.py"
    script.write_text("")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert cli.main(["run", "-np", "4", "--gpus", "--dry-run", str(script)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4 processes would run on this host but it has 2 GPU(s)" in err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert cli.main(["run", "-np", "4", "--gpus", "--dry-run", str(script)]) == 0
    assert "NCCL_DEBUG=WARN" in capsys.readouterr().out


def test_import_and_init_leave_tensorflow_configurable():
    # init() pins a GPU with set_visible_devices, which TensorFlow refuses once
    # its runtime started: importing hvd_keras must not start it (a 2.21 CPU
    # machine raises the same RuntimeError for CPU devices and thread counts).
    script = (
        "import hvd_keras, tensorflow as tf\n"
        "tf.config.set_visible_devices(tf.config.list_physical_devices('CPU'), 'CPU')\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        "hvd_keras.init()\n"
        "tf.config.threading.set_inter_op_parallelism_threads(1)\n"
        "import keras\n"
        "hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1))\n"
        "print('configurable')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=worker_env())
    assert proc.returncode == 0 and "configurable" in proc.stdout, proc.stderr[-2000:]


def test_this_host_is_found_by_address_and_the_hint_names_its_slots(tmp_path):
    # -H by address on a host whose hostname is node1: the check was skipped, and its hint said "-np 1".
    script = tmp_path / "train.py"
    script.write_text("")
    the_plan = launcher.plan(launcher.LaunchConfig(script=str(script), hosts="10.7.0.1:2,10.7.0.2:2", gpus=True),
                             environ={})
    mine = lambda h: host.is_local(h, names={"node1", "localhost", "eth0"}, addresses={"10.7.0.1", "127.0.0.1"},
                                   resolve=lambda name: set())
    with pytest.raises(launcher.LaunchError) as e:
        launcher.check_gpus(the_plan, gpu_count=1, is_local=mine)
    assert "2 processes would run on this host but it has 1 GPU(s)" in str(e.value)
    assert "HINT: give this host (10.7.0.1) at most 1 slots, one process per GPU: -H 10.7.0.1:1,10.7.0.2:2" in str(
        e.value)
    launcher.check_gpus(the_plan, gpu_count=2, is_local=mine)


@pytest.mark.parametrize("name,local", [
    ("node1", True), ("localhost", True), ("eth0", True),       # its hostname, localhost, an interface's name
    ("10.7.0.1", True), ("127.0.0.1", True), ("::1", True),      # its addresses, loopback
    ("node1.cluster", True),                                     # a name that resolves to one of its addresses
    ("10.7.0.2", False), ("node2", False), ("node9", False),     # another host, an unknown name
])
def test_local_host_by_name_address_and_interface(name, local):
    resolved = {"node1.cluster": {"10.7.0.1"}, "node2": {"10.7.0.2"}}
    assert host.is_local(name, names={"node1", "localhost", "eth0"}, addresses={"10.7.0.1", "127.0.0.1"},
                         resolve=lambda n: resolved.get(n, set())) is local


def test_host_identity_tells_apart_hosts_with_one_hostname(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("machine-a\n")
    b.write_text("machine-b\n")
    one, other = host.identity("node", files=(str(a),)), host.identity("node", files=(str(b),))
    assert one.name == other.name == "node" and one.key != other.key
    assert host.identity("node", files=(str(a),)) == one  # the same host, the same key


def test_the_first_failed_rank_is_named_with_its_host():
    from hvd_keras import launch_output

    hosts = launch_output.rank_hosts([("node1", 2), ("node2", 1), ("node3", 0)])
    assert hosts == {0: "node1", 1: "node1", 2: "node2"}
    namer = launch_output.FailureNamer(hosts)
    lines = ["[1]<stderr>:Traceback", "RuntimeError: Horovod detected that one or more processes exited with "
             "non-zero status, thus causing the job to be terminated. The first process to do so was:",
             "Process name: 2", "Exit code: 137"]
    added = [a for a in map(namer.feed, lines) if a]
    assert added == ["hvd-keras: rank 2 on host node2 ended first (exit code 137); the launcher ended the other "
                     "ranks. HINT: its own lines above, prefixed [2], say why."]


SMI = "0, GPU-aaaa\n1, GPU-bbbb\n2, GPU-cccc\n3, GPU-dddd\n"


def test_tasks_each_confined_to_their_own_gpu_as_0_are_told_apart_by_uuid():
    # Slurm's cgroups: each task sees one GPU, CUDA_VISIBLE_DEVICES=0, and nvidia-smi lists that GPU only.
    # Compared by the variable's string, they "would share GPU 0".
    ranks = [placement.choose("node1", r, r, 4, 1, "0", f"0, GPU-{r}{r}{r}\n") for r in range(4)]
    assert [p.device for p in ranks] == ["GPU-000", "GPU-111", "GPU-222", "GPU-333"]
    placement.check_distinct(ranks)


def test_two_tasks_on_one_physical_gpu_are_still_an_error():
    ranks = [placement.choose("node1", r, r, 2, 1, "2", SMI) for r in range(2)]  # both given GPU 2 of 4
    assert [p.device for p in ranks] == ["GPU-cccc", "GPU-cccc"]
    with pytest.raises(placement.PlacementError, match="ranks 0 and 1 on host node1 would share GPU GPU-cccc"):
        placement.check_distinct(ranks)


@pytest.mark.parametrize("visible,index,expected", [
    (None, 2, "GPU-cccc"),                  # sees every GPU: nvidia-smi's order
    ("3,1", 1, "GPU-bbbb"),                 # indices of nvidia-smi's
    ("GPU-xyz,GPU-bbbb", 0, "GPU-xyz"),     # UUIDs, as given
    ("MIG-1234", 0, "MIG-1234"),
    ("7", 0, None),                         # an index nvidia-smi does not list: cannot tell
])
def test_physical_gpu(visible, index, expected):
    assert placement.physical_gpu(visible, index, SMI) == expected
    assert placement.physical_gpu(visible, index, None) == (expected if visible and "-" in visible else None)


@pytest.mark.parametrize("environ,expected", [
    ({"HOROVOD_RANK": "3", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2"}, (3, 1, 2)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, (5, 1, 4)),
    ({"PMI_RANK": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}, (2, 0, 2)),
    ({"PMIX_RANK": "3", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
      "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}, (3, 1, 2)),
    ({"SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2,1"}, (2, 0, 1)),
    ({}, None), ({"HOROVOD_RANK": "0"}, None), ({"OMPI_COMM_WORLD_LOCAL_RANK": "x",
                                                 "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, None),
])
def test_launcher_ranks_table(environ, expected):
    from hvd_keras.cluster import launcher_ranks

    assert launcher_ranks(environ) == expected
