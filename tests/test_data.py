"""hvd_keras.data.shard: disjoint, complete up to the remainder, equal step counts."""

import numpy as np
import pytest
import keras
import tensorflow as tf
from conftest import load_ranks, run_workers

import hvd_keras


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (101, 4), (7, 7), (100, 3)])
def test_numpy_shards_are_disjoint_equal_and_cover_all_but_remainder(n, size):
    x = np.arange(n)
    y = -np.arange(n)
    shards = [hvd_keras.data.shard((x, y), rank=r, size=size) for r in range(size)]
    lengths = {len(sx) for sx, _ in shards}
    assert lengths == {n // size}
    union = np.concatenate([sx for sx, _ in shards])
    assert len(set(union)) == len(union)  # disjoint
    assert sorted(union) == list(range((n // size) * size))  # only the remainder is dropped
    for sx, sy in shards:
        np.testing.assert_array_equal(sy, -sx)  # x and y stay aligned


def test_shards_of_global_batches_are_the_single_process_batches():
    x = np.arange(32)
    b, size = 4, 2
    shards = [hvd_keras.data.shard(x, rank=r, size=size) for r in range(size)]
    for j in range(len(shards[0]) // b):
        together = np.concatenate([s[j * b:(j + 1) * b] for s in shards])
        assert sorted(together) == list(x[j * b * size:(j + 1) * b * size])


def test_dict_and_dataset_inputs():
    data = {"a": np.arange(9), "b": np.arange(9) * 10}
    s = hvd_keras.data.shard(data, rank=1, size=2)
    np.testing.assert_array_equal(s["a"], [1, 3, 5, 7])
    np.testing.assert_array_equal(s["b"], [10, 30, 50, 70])
    ds = tf.data.Dataset.range(9)
    got = [list(hvd_keras.data.shard(ds, rank=r, size=2).as_numpy_iterator()) for r in range(2)]
    assert got == [[0, 2, 4, 6], [1, 3, 5, 7]]
    inf = hvd_keras.data.shard(tf.data.Dataset.range(5).repeat(), rank=1, size=2)
    assert list(inf.take(4).as_numpy_iterator()) == [1, 3, 0, 2]


def test_unknown_length_dataset_is_refused_with_a_hint():
    ds = tf.data.Dataset.range(10).filter(lambda v: v % 3 > 0)
    with pytest.raises(ValueError, match="assert_cardinality"):
        hvd_keras.data.shard(ds, rank=0, size=2)
    ok = hvd_keras.data.shard(ds.apply(tf.data.experimental.assert_cardinality(6)), rank=0, size=2)
    assert list(ok.as_numpy_iterator()) == [1, 4, 7]


@pytest.mark.parametrize("bad,match", [
    (((np.arange(4), np.arange(5)),), "equal length"),
    ((3,), "first dimension"),
    ((np.arange(3),), "at least one sample"),
    (((),), r"Received: \(\)"),
    (([1.0, 2.0],), "np.asarray"),
])
def test_bad_array_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hvd_keras.data.shard(*bad, rank=0, size=4)


@pytest.mark.parametrize("kind", ["numpy", "dataset"])
def test_uneven_data_gives_equal_steps_on_two_ranks(tmp_path, kind):
    out = str(tmp_path)
    run_workers("shard_steps.py", ["--out", out, "--samples", "101", "--kind", kind])
    r0, r1 = load_ranks(out, 2)
    assert int(r0["batches"]) == int(r1["batches"]) == 2 * 7  # 2 epochs of ceil(50 / 8)
    assert not set(r0["seen"]) & set(r1["seen"])
    assert sorted(np.concatenate([r0["seen"], r1["seen"]])) == list(range(100))


class _Batches(keras.utils.PyDataset):
    def __init__(self, n, infinite=False, **kwargs):
        super().__init__(**kwargs)
        self.n, self.infinite, self.epochs = n, infinite, []

    @property
    def num_batches(self):
        return None if self.infinite else self.n

    def __getitem__(self, i):
        return np.full((2, 1), i, "float32"), np.zeros((2,), "float32")

    def on_epoch_end(self):
        self.epochs.append("end")


def test_pydataset_is_sharded_by_batches_keeping_its_loader_settings():
    inner = _Batches(7, workers=3, use_multiprocessing=True, max_queue_size=5)
    shards = [hvd_keras.data.shard(inner, rank=r, size=3) for r in range(3)]
    assert [s.num_batches for s in shards] == [2, 2, 2] and len(shards[1]) == 2
    assert [[int(s[j][0][0, 0]) for j in range(2)] for s in shards] == [[0, 3], [1, 4], [2, 5]]
    assert all(isinstance(s, keras.utils.PyDataset) for s in shards)
    assert (shards[0].workers, shards[0].use_multiprocessing, shards[0].max_queue_size) == (3, True, 5)
    shards[2].on_epoch_end()
    assert inner.epochs == ["end"]
    endless = hvd_keras.data.shard(_Batches(0, infinite=True), rank=1, size=2)
    assert endless.num_batches is None and int(endless[4][0][0, 0]) == 9
    with pytest.raises(ValueError, match="at least one batch per rank"):
        hvd_keras.data.shard(_Batches(1), rank=0, size=2)


def test_generator_error_names_a_fix_that_works_as_written():
    def make_generator():
        for i in range(5):
            yield np.full((2, 1), i, "float32")

    with pytest.raises(TypeError, match="from_generator") as err:
        hvd_keras.data.shard(make_generator(), rank=0, size=2)
    assert "\n" not in str(err.value)
    # the HINT, as written
    num_batches = 5
    ds = tf.data.Dataset.from_generator(
        make_generator, output_signature=tf.TensorSpec((2, 1), tf.float32)
    ).apply(tf.data.experimental.assert_cardinality(num_batches))
    got = [[int(b[0, 0]) for b in hvd_keras.data.shard(ds, rank=r, size=2).as_numpy_iterator()] for r in range(2)]
    assert got == [[0, 2], [1, 3]]


def _autotune(dataset):
    return dataset.options().autotune.enabled


def test_autotuning_is_off_for_a_process_on_one_cpu(monkeypatch):
    dataset = tf.data.Dataset.range(8).batch(2).prefetch(tf.data.AUTOTUNE)
    monkeypatch.setattr(hvd_keras.pipeline, "_cpus", lambda: 2)
    assert _autotune(hvd_keras.pipeline.adjust(dataset)) is None  # left to tf.data
    monkeypatch.setattr(hvd_keras.pipeline, "_cpus", lambda: 1)
    adjusted = hvd_keras.pipeline.adjust(dataset)
    assert _autotune(adjusted) is False
    assert list(adjusted.as_numpy_iterator())[-1].tolist() == [6, 7]  # the same elements
    options = tf.data.Options()
    options.autotune.enabled = True
    chosen = dataset.with_options(options)
    assert _autotune(hvd_keras.pipeline.adjust(chosen)) is True  # the user's choice stays


def test_fit_evaluate_and_predict_iterate_the_adjusted_dataset(monkeypatch):
    asked = []
    monkeypatch.setattr(hvd_keras.pipeline, "_cpus", lambda: asked.append(1) or 1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.ones((8, 1), "float32")
    counts = []
    for run in (lambda: model.fit(x, y, batch_size=4, epochs=2, verbose=0),
                lambda: model.evaluate(x, y, verbose=0), lambda: model.predict(x, verbose=0)):
        run()
        counts.append(len(asked))
    assert 0 < counts[0] < counts[1] < counts[2]  # each made its iterator from the adjusted dataset
