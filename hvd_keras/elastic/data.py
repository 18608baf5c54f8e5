"""The data of an elastic epoch: one order per (seed, epoch), cut into global batches for whatever size the job has now.

Every rank computes the epoch's order alike from the seed and the epoch
alone, and the state records how many samples of that order committed steps
have trained (`offset`). After a reset the rest of the order,
`order[offset:]`, is cut into global batches for the new number of ranks:
global batch `j` is the next `batch` samples of the order, and rank `r` trains
the `r`-th equal block of it. So across any number of resizes every sample of
an epoch is trained at most once; the only samples left out are the last
`remaining % size` of an epoch (fewer than the number of ranks at its end),
which cannot be split evenly.
"""

import dataclasses

import numpy as np

from hvd_keras._horovod import tf


def epoch_order(num_samples, seed, epoch, shuffle=True):
    """The order of an epoch's samples: a permutation that depends on `seed` and `epoch` only.

    Args:
        num_samples: samples in the data.
        seed: the job's data seed (the elastic state's `seed`).
        epoch: the epoch, from 0.
        shuffle: False keeps the data's own order in every epoch.

    Example:

    ```python
    order = hvd_keras.elastic.epoch_order(1000, seed=7, epoch=3)  # the same on every rank and after any reset
    ```
    """
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_samples)


@dataclasses.dataclass(frozen=True)
class Step:
    """One global batch: `start` is its first position in the epoch's order, `batch` its samples over all ranks."""

    epoch: int
    start: int
    batch: int
    size: int


@dataclasses.dataclass(frozen=True)
class Segment:
    """The steps one rank trains from `start` to the end of an epoch, at one size.

    `ids` are this rank's samples in training order (its block of every
    global batch, one after another); `rank_batch` is the per-rank batch
    size of the full steps (the last step may be smaller).
    """

    epoch: int
    start: int
    size: int
    rank: int
    steps: tuple
    ids: np.ndarray
    rank_batch: int

    def offset_after(self, done):
        """The epoch's offset after the first `done` steps of this segment."""
        if done == 0:
            return self.start
        last = self.steps[done - 1]
        return last.start + last.batch

    def block(self, order, step):
        """This rank's samples of `step`."""
        share = step.batch // self.size
        first = step.start + self.rank * share
        return order[first:first + share]


def plan_segment(order, epoch, start, global_batch, size, rank):
    """The rest of an epoch from `start`, in global batches of `global_batch` samples on `size` ranks.

    The last global batch takes what is left, rounded down to a multiple of
    `size` (every rank trains as many samples, so averaging the ranks'
    gradients is the gradient of the global batch); the samples rounded away
    (fewer than `size`) are the epoch's remainder.
    """
    if global_batch % size:
        raise ValueError(
            f"the global batch must split evenly over the ranks. Received: global batch {global_batch} on "
            f"{size} ranks. HINT: pick a global batch divisible by every size the job may have (e.g. 12 for "
            "1 to 4 ranks), or batch_mode=\"per_rank\".")
    remaining = len(order) - start
    batches = [global_batch] * (remaining // global_batch)
    last = (remaining % global_batch) // size * size
    if last:
        batches.append(last)
    steps, position = [], start
    for batch in batches:
        steps.append(Step(epoch=epoch, start=position, batch=batch, size=size))
        position += batch
    segment = Segment(epoch=epoch, start=start, size=size, rank=rank, steps=tuple(steps),
                      ids=np.zeros([0], dtype=np.int64), rank_batch=global_batch // size)
    ids = [segment.block(order, s) for s in steps]
    return dataclasses.replace(segment, ids=np.concatenate(ids) if ids else np.zeros([0], dtype=np.int64))


def take(data, ids):
    """`data` (an array, or a tuple, list or dict of arrays) at rows `ids`."""
    return tf.nest.map_structure(lambda a: np.asarray(a)[ids], data)


def num_samples(data):
    """The common length of the arrays in `data`; a one-line error for anything else."""
    leaves = tf.nest.flatten(data)
    lengths = set()
    for leaf in leaves:
        if isinstance(leaf, (tf.data.Dataset,)) or not hasattr(leaf, "__len__") or not hasattr(leaf, "__getitem__"):
            raise TypeError(
                "hvd_keras.elastic.fit reshards arrays after every resize. Received: an input of type "
                f"{type(leaf).__name__}. HINT: pass numpy arrays (x, y), or tuples or dicts of them; a "
                "tf.data pipeline cannot be cut at a sample offset and resharded.")
        lengths.add(len(leaf))
    if len(lengths) != 1:
        raise ValueError(f"hvd_keras.elastic.fit expects arrays of equal length. Received: lengths "
                         f"{sorted(lengths)}. HINT: pass x, y and sample weights with one entry per sample.")
    return lengths.pop()


def ledger_batches(ledger, num_samples_, seed, shuffle=True):
    """The committed global batches of a job, in training order: a list of (epoch, sample ids).

    Args:
        ledger: the elastic state's `ledger` (committed steps as
            `[epoch, start, batch, steps, size]` runs).
        num_samples_: samples in the data.
        seed: the state's `seed`.
        shuffle: as passed to `fit`.

    Example:

    ```python
    for epoch, ids in hvd_keras.elastic.ledger_batches(state.ledger, len(x), state.seed):
        model.train_on_batch(x[ids], y[ids])  # one process replays the job
    ```
    """
    batches, orders = [], {}
    for epoch, start, batch, steps, _size in ledger:
        order = orders.setdefault(epoch, epoch_order(num_samples_, seed, epoch, shuffle))
        for j in range(steps):
            first = start + j * batch
            batches.append((epoch, order[first:first + batch]))
    return batches
