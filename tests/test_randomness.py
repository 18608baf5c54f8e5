"""Randomness across ranks: data code draws alike on every rank (each sample once per epoch), masks differ."""

import numpy as np
import pytest
from conftest import load_ranks, run_workers

from hvd_keras import seeds


def test_unseeded_shuffle_before_sharding_trains_each_sample_once(tmp_path, controller):
    # 1,200 samples, shuffle(1024), batches of 64: 19 batches, 9 per rank; the 19th, the remainder, is dropped.
    # Unseeded, each rank shuffled its own way: 325 samples never trained, 277 twice.
    run_workers("unseeded_data.py", ["--kind", "shuffled-dataset", "--out", str(tmp_path)], controller=controller)
    r0, r1 = load_ranks(str(tmp_path), 2)
    trained = r0["trained"] + r1["trained"]
    assert trained.max() == 1 and trained.sum() == 18 * 64


def test_unseeded_permutation_before_validation_split_keeps_validation_apart(tmp_path):
    run_workers("unseeded_data.py", ["--kind", "permuted-numpy", "--out", str(tmp_path)])
    r0, r1 = load_ranks(str(tmp_path), 2)
    trained, validated = r0["trained"] + r1["trained"], r0["seen"] + r1["seen"]
    assert validated.sum() > 0 and trained.max() == 1
    assert not np.any((trained > 0) & (validated > 0)), "a validation sample was trained on"


def test_dropout_masks_differ_between_ranks_with_equal_weights(tmp_path):
    run_workers("unseeded_data.py", ["--kind", "dropout", "--out", str(tmp_path)])
    r0, r1 = load_ranks(str(tmp_path), 2)
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.mean(r0["masks"] != r1["masks"]) > 0.1  # the same masks everywhere before


@pytest.mark.parametrize("environ", [
    {"HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1", "HOROVOD_GLOO_RENDEZVOUS_PORT": "4242"},
    {"OMPI_MCA_orte_hnp_uri": "1234567@0;tcp://10.0.0.1:5000"},
    {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"},
])
def test_job_seed_is_the_same_on_every_rank_and_another_for_another_job(environ):
    rank0 = seeds.job_seed({**environ, "HOROVOD_RANK": "0", "OMPI_COMM_WORLD_RANK": "0", "SLURM_PROCID": "0"})
    rank1 = seeds.job_seed({**environ, "HOROVOD_RANK": "1", "OMPI_COMM_WORLD_RANK": "1", "SLURM_PROCID": "1"})
    assert rank0 == rank1 is not None and 0 <= rank0 < 2 ** 31
    other = seeds.job_seed({k: v + "9" for k, v in environ.items()})
    assert other != rank0
    assert seeds.job_seed({"HOROVOD_RANK": "0"}) is None


def test_shard_refuses_a_dataset_shuffled_without_a_seed():
    import tensorflow as tf

    from hvd_keras import data

    # No global seed either (an earlier test in this process may have set one, which seeds every shuffle).
    tf.random.set_seed(None)
    unseeded = tf.data.Dataset.range(10).shuffle(5).map(lambda v: v * 2)
    with pytest.raises(ValueError, match=r"shuffles without a seed \(ShuffleDataset\).*HINT: shard first"):
        data.shard(unseeded, rank=0, size=2)
    assert len(list(data.shard(tf.data.Dataset.range(10).shuffle(5, seed=1), rank=0, size=2))) == 5
    assert len(list(data.shard(unseeded, rank=0, size=1))) == 10  # one process: nothing to agree on
