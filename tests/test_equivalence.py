"""2 ranks with per-rank batch b train the same model as 1 rank with batch 2b."""

import functools

import numpy as np
import pytest
from conftest import load_ranks, run_workers, worker_env

GLOBAL_BATCH = 16
STEPS = 6


@functools.lru_cache(maxsize=None)
def _single(tmp_root, *args):
    out = f"{tmp_root}/single-{'-'.join(args)}"
    run_workers("train_equivalence.py", ["--out", out, *args], np_=1)
    return load_ranks(out, 1)[0]


def _compare(tmp_path, tmp_path_factory, controller, *args):
    root = str(tmp_path_factory.getbasetemp())
    common = ["--global-batch", str(GLOBAL_BATCH), "--steps", str(STEPS), *args]
    single = _single(root, *common)
    out = str(tmp_path / "dist")
    run_workers("train_equivalence.py", ["--out", out, *common], np_=2, controller=controller)
    r0, r1 = load_ranks(out, 2)
    # On data of unknown length Keras's own fit may count one iteration more (in
    # one process too): the last call's counter update can run before the
    # iterator reports its end.
    counts = {STEPS, STEPS + 1} if "unknown-length" in args else {STEPS}
    assert int(r0["iterations"]) in counts and int(single["iterations"]) in counts
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    assert np.abs(r0["weights"] - single["weights"]).max() < 1e-5
    assert np.abs(r0["optimizer"] - single["optimizer"]).max() < 1e-5
    return single, r0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_match_one_rank_with_double_batch(tmp_path, tmp_path_factory, controller, optimizer):
    _compare(tmp_path, tmp_path_factory, controller, "--optimizer", optimizer)


@pytest.mark.parametrize(
    "args",
    [
        ("--mode", "subclass"),
        ("--mode", "class_weight"),
        ("--mode", "sample_weight"),
        ("--mode", "unknown-length"),
        ("--optimizer", "lso"),
        ("--optimizer", "adamw-clip"),
    ],
    ids=["subclassed-train-step", "class-weight", "sample-weight", "unknown-length-dataset", "loss-scale",
         "adamw-global-clipnorm"],
)
def test_equivalence_holds_for(tmp_path, tmp_path_factory, args):
    _compare(tmp_path, tmp_path_factory, "gloo", *args)


def test_unwrapped_optimizer_is_refused(controller):
    proc = run_workers("train_equivalence.py", ["--out", "/nonexistent", "--wrap", "no", "--steps", "2"], np_=2,
                       controller=controller, check=False)
    assert proc.returncode != 0
    line = next(line for line in proc.stderr.splitlines() if "would apply gradients on 2 ranks" in line)
    assert "SGD (compile's optimizer)" in line and "nothing was updated" in line
    assert "HINT: model.compile(optimizer=hvd_keras.DistributedOptimizer(opt), ...)" in line


def test_unwrapped_optimizer_drifts(tmp_path, tmp_path_factory):
    """The control: without the wrapper (allowed on purpose) the comparison above does fail."""
    root = str(tmp_path_factory.getbasetemp())
    common = ["--global-batch", str(GLOBAL_BATCH), "--steps", str(STEPS), "--optimizer", "sgd"]
    single = _single(root, *common)
    out = str(tmp_path / "plain")
    run_workers("train_equivalence.py", ["--out", out, "--wrap", "no", *common], np_=2,
                env=worker_env(HVD_KERAS_LOCAL_UPDATES="1"))
    r0, r1 = load_ranks(out, 2)
    assert np.abs(r0["weights"] - r1["weights"]).max() > 1e-3
    assert np.abs(r0["weights"] - single["weights"]).max() > 1e-3


def test_train_on_batch_traces_the_step_once_and_matches_keras(monkeypatch):
    """train_on_batch passes a new generator per call; the train function must not retrace for each."""
    import keras
    import tensorflow as tf

    import hvd_keras

    hvd_keras.init()
    strategy = type(tf.distribute.get_strategy())
    runs = []

    def counting_run(self, fn, args=(), kwargs=None, options=None):
        runs.append(1)  # in a compiled function: once per trace
        return original_run(self, fn, args=args, kwargs=kwargs, options=options)

    original_run = strategy.run
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)
    y = np.array([[1.0], [0.0], [2.0], [1.0]], "float32")
    losses = {}
    for name, wrap in [("keras", lambda o: o), ("hvd_keras", hvd_keras.DistributedOptimizer)]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=wrap(keras.optimizers.SGD(0.1)), loss="mse")
        if name == "hvd_keras":
            monkeypatch.setattr(strategy, "run", counting_run)
        losses[name] = [float(model.train_on_batch(x, y)) for _ in range(4)]
    assert len(runs) == 1
    np.testing.assert_allclose(losses["hvd_keras"], losses["keras"], rtol=1e-6)
