"""Sharding of training data across ranks."""

import inspect

from hvd_keras import _compat
from hvd_keras._horovod import keras, tf
from hvd_keras.runtime import rank as _rank
from hvd_keras.runtime import size as _size


def shard(data, rank=None, size=None):
    """Gives each rank a disjoint, equally long part of `data`.

    Every rank gets `n // size` elements, so every rank runs the same number
    of steps per epoch: a rank that ran out first would leave the others
    waiting forever in the gradient allreduce. The remainder, the last
    `n % size` elements (fewer than `size`), is dropped, so each epoch sees
    `size * (n // size)` elements in all.

    Rank `r` gets elements `r, r + size, r + 2 * size, ...` With per-rank
    batch size `b`, the ranks' batch `j` together are exactly batch `j` of
    batch size `size * b` on one process (without shuffling).

    A `keras.utils.PyDataset` is sharded by its batches: rank `r` gets
    batches `r, r + size, ...` (its `workers`, `use_multiprocessing` and
    `max_queue_size` kept), every rank the same number; an infinite one
    (`num_batches` of `None`) is sharded without truncation.

    Args:
        data: a `tf.data.Dataset`, a `keras.utils.PyDataset`, an array (numpy, tensor), or a tuple,
            list or dict of arrays of equal length (a list is a structure of
            arrays, not an array: convert a list of samples with `np.asarray`) such as `(x, y)` or
            `(x, y, sample_weight)`. A dataset is sharded by its elements:
            shard before `batch()` so that the remainder dropped is elements,
            not batches, and before any `shuffle()` without a fixed seed
            (ranks shuffling differently would draw overlapping shards). An
            infinite (repeated) dataset is sharded without truncation; pass
            `steps_per_epoch` to `fit`.
        rank: the shard to return; defaults to this process's rank.
        size: the number of shards; defaults to the number of processes.

    Returns:
        The shard, of the same kind as `data`.

    Example:

    ```python
    import numpy as np
    import hvd_keras

    x, y = np.zeros((1000, 8)), np.zeros((1000,))
    x_shard, y_shard = hvd_keras.data.shard((x, y))
    # each of 3 ranks gets 333 samples; sample 999 is dropped
    ```
    """
    size = _size() if size is None else size
    rank = _rank() if rank is None else rank
    if not isinstance(size, int) or size < 1 or not isinstance(rank, int) or not 0 <= rank < size:
        raise ValueError(
            f"shard needs 0 <= rank < size. Received: rank={rank!r}, size={size!r}. "
            "HINT: leave rank and size unset to use this process's."
        )
    if isinstance(data, tf.data.Dataset):
        return _shard_dataset(data, rank, size)
    if isinstance(data, keras.utils.PyDataset):
        return ShardedPyDataset(data, rank, size)
    if inspect.isgenerator(data):
        raise TypeError(generator_error("shard"))
    return _shard_arrays(data, rank, size)


def generator_error(where):
    """The one-line error for a Python generator, whose fix works as written."""
    return (
        f"{where} cannot shard a Python generator: a generator cannot skip to the batches of "
        "one rank, and ranks that run different numbers of steps hang in the allreduce. "
        "Received: a generator. HINT: make it a dataset of known length and shard that: "
        "ds = tf.data.Dataset.from_generator(make_generator, output_signature=...)"
        ".apply(tf.data.experimental.assert_cardinality(num_batches)), then "
        "hvd_keras.data.shard(ds); or write a keras.utils.PyDataset."
    )


class ShardedPyDataset(keras.utils.PyDataset):
    """Batches `rank, rank + size, ...` of a `keras.utils.PyDataset`; what `shard` returns for one.

    Args:
        dataset: the `keras.utils.PyDataset` to shard.
        rank: the shard this one is.
        size: the number of shards.

    Example:

    ```python
    ds = hvd_keras.data.shard(MyPyDataset(workers=4))  # a ShardedPyDataset
    model.fit(ds, epochs=3)
    ```
    """

    def __init__(self, dataset, rank, size):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset, self.rank, self.size = dataset, rank, size
        n = self._inner_batches()
        if n is not None and n < size:
            raise ValueError(
                f"shard needs at least one batch per rank. Received: a PyDataset of {n} "
                f"batches for {size} ranks. HINT: use smaller batches or fewer ranks."
            )

    def _inner_batches(self):
        try:
            return self.dataset.num_batches
        except (AttributeError, NotImplementedError):  # Keras < 3.5 knows only __len__
            return len(self.dataset)

    @property
    def num_batches(self):
        n = self._inner_batches()
        return None if n is None else n // self.size

    def __len__(self):
        n = self.num_batches
        if n is None:
            raise TypeError("an infinite PyDataset has no length")
        return n

    def __getitem__(self, index):
        return self.dataset[self.rank + index * self.size]

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _shard_dataset(dataset, rank, size):
    unseeded = _compat.unseeded_random_datasets(dataset) if size > 1 else []
    if unseeded:
        raise ValueError(
            f"shard received a dataset that shuffles without a seed ({', '.join(unseeded)}): each rank would "
            "shuffle differently, so some elements would be trained twice per epoch and others never. HINT: "
            "shard first and shuffle the shard (hvd_keras.data.shard(ds).shuffle(n)), or pass a seed "
            "(ds.shuffle(n, seed=1)), or `import hvd_keras.auto`, which seeds every rank alike.")
    n = int(dataset.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        return dataset.shard(size, rank)
    if n == tf.data.UNKNOWN_CARDINALITY:
        raise ValueError(
            "shard cannot give every rank the same number of elements: the dataset's "
            "length is unknown (after filter() or from a generator), and ranks that run "
            "different numbers of steps hang in the allreduce. HINT: declare the length "
            "with dataset.apply(tf.data.experimental.assert_cardinality(n)), or "
            "repeat() the dataset and pass steps_per_epoch to fit()."
        )
    if n < size:
        raise ValueError(
            f"shard needs at least one element per rank. Received: a dataset of {n} "
            f"elements for {size} ranks. HINT: shard before batch(), or use fewer ranks."
        )
    return dataset.take((n // size) * size).shard(size, rank)


def _shard_arrays(data, rank, size):
    leaves = tf.nest.flatten(data)
    if not leaves:
        raise ValueError(f"shard received no arrays. Received: {data!r}. HINT: pass (x, y).")
    lengths = set()
    for leaf in leaves:
        try:
            lengths.add(len(leaf))
        except TypeError:
            raise TypeError(
                "shard expects a tf.data.Dataset or arrays with a first dimension. "
                f"Received: an element of type {type(leaf).__name__}. "
                "HINT: pass numpy arrays such as (x, y) (np.asarray(a_list) for a list of samples), "
                "or a tf.data.Dataset."
            ) from None
    if len(lengths) != 1:
        raise ValueError(
            f"shard expects arrays of equal length. Received: lengths {sorted(lengths)}. "
            "HINT: pass x, y and sample weights with one entry per sample."
        )
    n = lengths.pop()
    if n < size:
        raise ValueError(
            f"shard needs at least one sample per rank. Received: {n} samples for {size} "
            "ranks. HINT: use fewer ranks or more data."
        )
    rows = slice(rank, (n // size) * size, size)
    return tf.nest.map_structure(lambda leaf: leaf[rows], data)
