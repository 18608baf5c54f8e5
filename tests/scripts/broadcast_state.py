"""Each rank starts from its own weights and optimizer slots; then broadcast.

Writes out/rank{r}.npz with the state before and after the broadcast, and which entries are seed-generator states.
"""

import _common

_common.quiet_tf()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hvd_keras  # noqa: E402

hvd_keras.init()
rank = hvd_keras.rank()
keras.utils.set_random_seed(100 + rank)

model = keras.Sequential([
    keras.Input((5,)),
    keras.layers.Dense(8, activation="relu"),
    keras.layers.BatchNormalization(),
    keras.layers.Dropout(0.2, seed=rank),  # a SeedGenerator: uint32 state
    keras.layers.Dense(2),
])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.Adam(0.01)), loss="mse")
model.optimizer.build(model.trainable_variables)
# Give the optimizer slots rank-specific values, as after some local steps.
rng = np.random.default_rng(rank)
for v in model.optimizer.variables:
    v.assign(rng.integers(1, 100, size=v.shape).astype(v.dtype))

variables = hvd_keras.broadcast.state_variables(model)
before = [np.asarray(v).astype(np.float64).ravel() for v in variables]
hvd_keras.broadcast_state(model, root_rank=int(_common.arg("root", "0")))
after = [np.asarray(v).astype(np.float64).ravel() for v in variables]
# Seed-generator states are the exception: each rank moves to a stream of its own after a broadcast.
seed_state = [np.full(b.shape, "seed_generator_state" in v.path) for v, b in zip(variables, before)]
_common.save_result(
    _common.arg("out"), rank,
    before=np.concatenate(before), after=np.concatenate(after), seed_state=np.concatenate(seed_state),
    n_optimizer=len(model.optimizer.variables), n_vars=len(variables),
)
