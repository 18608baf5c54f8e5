"""hvd_keras inside an MPI program: init(comm=...) with an mpi4py communicator (run under mpirun)."""

import _common

_common.quiet_tf()

from mpi4py import MPI  # noqa: E402

import keras  # noqa: E402

import hvd_keras  # noqa: E402

world = MPI.COMM_WORLD
mode = _common.arg("mode")
# split: each process alone on its own communicator; dup: all processes, through a copy of the world.
comm = world.Split(color=world.rank) if mode == "split" else world.Dup()
hvd_keras.init(comm=comm)
x, y = _common.regression_data(n=32)
keras.utils.set_random_seed(world.rank)  # different start: the broadcast must fix it where size > 1
model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)])
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(*hvd_keras.data.shard((x, y)), batch_size=4, epochs=1, verbose=0,
          callbacks=[hvd_keras.callbacks.BroadcastInitialState()])
_common.save_result(_common.arg("out"), world.rank, size=hvd_keras.size(), hvd_rank=hvd_keras.rank(),
                    weights=_common.flat_weights(model.trainable_variables))
