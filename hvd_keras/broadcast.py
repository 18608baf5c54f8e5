"""Broadcast of model and optimizer state from one rank to all."""

from hvd_keras import placement, seeds
from hvd_keras._horovod import hvd, keras, tf
from hvd_keras.runtime import rank, size, this_placement

# Horovod has no wire type for these; they travel widened and come back exact.
_WIRE_DTYPES = {tf.uint32: tf.int64, tf.uint64: tf.int64, tf.bfloat16: tf.float32}


def state_variables(model):
    """Every variable that must agree across ranks: the model's and its optimizers'.

    Builds compile's optimizer first if needed: Keras 3 creates optimizer
    slots (momentum, Adam moments) lazily, and a slot created after the
    broadcast would differ between ranks. Optimizers a model keeps as
    attributes (a GAN's) are included once built; built later, by their
    first update, they start equal on every rank (zero slots, the same
    averaged gradients).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built and model.trainable_variables:
        optimizer.build(model.trainable_variables)
    variables = list(model.variables)
    for other in model_optimizers(model).values():
        if other.built:
            variables += list(other.variables)
    return variables


def model_optimizers(model):
    """Every optimizer a model may train with, by name: compile's (`"optimizer"`) and those set as its attributes.

    A custom `compile` that keeps its own optimizers (a GAN's
    `self.d_optimizer`, `self.g_optimizer`) and a `train_step` that applies
    them are found here, in the same order on every rank.
    """
    found = {}
    compiled = getattr(model, "optimizer", None)
    if isinstance(compiled, keras.optimizers.Optimizer):
        found["optimizer"] = compiled
    for name, value in vars(model).items():
        if isinstance(value, keras.optimizers.Optimizer) and not any(value is v for v in found.values()):
            found[name] = value
    return found


def check_same_structure(variables, root_rank=0):
    """Raises on every rank if `variables` differ in number, shape or dtype between ranks.

    Horovod's fused allreduce does not always notice tensors whose shapes
    differ between ranks; this check turns that user bug into an error that
    names the rank and the first differing variable. Every rank must call it.
    """
    mine = [(tuple(v.shape), str(v.dtype)) for v in variables]
    gathered = hvd.allgather_object((mine, this_placement()), name="hvd_keras.state_structure")
    # The first collective of a job: it also proves that no two processes share a GPU.
    placement.check_distinct([p for _, p in gathered])
    everyone = [structure for structure, _ in gathered]
    reference = everyone[root_rank]
    for other_rank, theirs in enumerate(everyone):
        if theirs == reference:
            continue
        if len(theirs) != len(reference):
            detail = f"{len(theirs)} variables, rank {root_rank} has {len(reference)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(theirs, reference)) if a != b)
            path = variables[i].path if i < len(variables) else f"variable #{i}"
            detail = f"{path} has shape/dtype {theirs[i]}, rank {root_rank} has {reference[i]}"
        raise ValueError(
            f"hvd_keras: the model differs between ranks: rank {other_rank} has {detail}. "
            "HINT: build the same model on every rank (same layers, input shapes and optimizer); "
            "nothing about the architecture may depend on the rank."
        )


def broadcast_variables(variables, root_rank=0):
    """Overwrites `variables` on every rank with their values on `root_rank`.

    The variables must be the same in number, shape and dtype on every rank;
    otherwise every rank raises a `ValueError` that names the first
    difference (never a hang). A no-op at size 1.

    Args:
        variables: list of Keras (or TensorFlow) variables.
        root_rank: the rank whose values win.
    """
    if size() == 1:
        return
    if not 0 <= root_rank < size():
        raise ValueError(
            f"root_rank must be in [0, {size()}). Received: root_rank={root_rank}. "
            "HINT: use root_rank=0."
        )
    check_same_structure(variables, root_rank)

    @tf.function
    def broadcast_all():
        # One graph: Horovod fuses the broadcasts instead of paying one
        # round trip per variable.
        for i, v in enumerate(variables):
            value = tf.convert_to_tensor(v)
            wire = _WIRE_DTYPES.get(value.dtype)
            sent = tf.cast(value, wire) if wire else value
            received = hvd.broadcast(sent, root_rank, name=f"hvd_keras.broadcast.{i}")
            v.assign(tf.cast(received, value.dtype) if wire else received)

    broadcast_all()


def broadcast_state(model, root_rank=0):
    """Makes every rank hold `root_rank`'s model weights and optimizer state.

    Call it once after building the model and before training, so that all
    ranks start from the same point (random initialisation differs between
    processes). It builds the optimizer's slot variables first, so they are
    broadcast too. In `fit`, the `BroadcastInitialState` callback does this.

    Args:
        model: a built `keras.Model`, compiled or not.
        root_rank: the rank whose state is kept.

    Example:

    ```python
    import keras
    import hvd_keras

    hvd_keras.init()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer("adam"), loss="mse")
    hvd_keras.broadcast_state(model)
    ```
    """
    if not model.variables:
        raise ValueError(
            f"broadcast_state needs a built model; {model.name} has no weights yet. "
            "HINT: give the model an Input layer, call model.build(input_shape) first, "
            "or pass hvd_keras.callbacks.BroadcastInitialState() to fit()."
        )
    variables = state_variables(model)
    broadcast_variables(variables, root_rank=root_rank)
    # Equal weights, but each rank its own dropout and augmentation masks.
    if size() > 1:
        seeds.per_rank_seed_states(variables, rank())
    return model
