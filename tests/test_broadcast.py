"""broadcast_state leaves every rank with the root's weights and optimizer slots."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SCRIPTS, load_ranks, run_workers, worker_env


@pytest.mark.parametrize("root", [0, 1])
def test_broadcast_state_copies_weights_and_slots(tmp_path, controller, root):
    out = str(tmp_path)
    run_workers("broadcast_state.py", ["--out", out, "--root", str(root)], controller=controller)
    ranks = load_ranks(out, 2)
    # Ranks really started apart, in weights and in optimizer slots.
    assert np.abs(ranks[0]["before"] - ranks[1]["before"]).max() > 0.1
    assert int(ranks[0]["n_optimizer"]) > 2  # iterations, learning rate, Adam moments
    seed = ranks[0]["seed_state"]
    assert seed.sum() == 2  # the Dropout's SeedGenerator: [seed, counter]
    for r in ranks:
        np.testing.assert_array_equal(r["after"][~seed], ranks[root]["before"][~seed])
    # Seed-generator states: rank 0 keeps the root's, rank 1 moves to its own stream (its dropout masks differ).
    np.testing.assert_array_equal(ranks[0]["after"][seed], ranks[root]["before"][seed])
    assert ranks[1]["after"][seed][0] != ranks[0]["after"][seed][0]
    assert ranks[1]["after"][seed][1] == ranks[0]["after"][seed][1]


@pytest.mark.parametrize("mode", ["dup", "split"])
def test_init_on_an_mpi4py_communicator(tmp_path, mode):
    out = str(tmp_path / "res")
    cmd = ["mpirun", "-np", "2", "-x", "PATH", "-x", "PYTHONPATH", sys.executable,
           os.path.join(SCRIPTS, "mpi_comm.py"), "--mode", mode, "--out", out]
    env = worker_env()
    env.pop("OMPI_MCA_mpi_yield_when_idle", None)
    proc = subprocess.run(cmd, env=env, cwd=SCRIPTS, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # MPI started before hvd_keras: too late to set OpenMPI's idle yielding, so the rank 0 of each job says how.
    note = "mpi4py started MPI before hvd_keras.init() without OMPI_MCA_mpi_yield_when_idle=1"
    assert proc.stderr.count(note) == (1 if mode == "dup" else 2), proc.stderr[-3000:]
    r0, r1 = load_ranks(out, 2)
    if mode == "dup":
        assert int(r0["size"]) == int(r1["size"]) == 2 and (int(r0["hvd_rank"]), int(r1["hvd_rank"])) == (0, 1)
        np.testing.assert_array_equal(r0["weights"], r1["weights"])
    else:  # each process is a job of one on its own communicator: nothing is shared
        assert int(r0["size"]) == int(r1["size"]) == 1 and int(r0["hvd_rank"]) == int(r1["hvd_rank"]) == 0
        assert np.abs(r0["weights"] - r1["weights"]).max() > 1e-3


def test_init_on_an_mpi4py_communicator_is_quiet_when_mpi_yields(tmp_path):
    cmd = ["mpirun", "-np", "2", "-x", "PATH", "-x", "PYTHONPATH", "-x", "OMPI_MCA_mpi_yield_when_idle=1",
           sys.executable, os.path.join(SCRIPTS, "mpi_comm.py"), "--mode", "dup", "--out", str(tmp_path / "res")]
    proc = subprocess.run(cmd, env=worker_env(), cwd=SCRIPTS, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OMPI_MCA_mpi_yield_when_idle" not in proc.stderr
