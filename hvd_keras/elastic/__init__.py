"""Elastic training on Keras 3: the job goes on when ranks die, and grows and shrinks as hosts come and go.

Horovod's elastic mode (`horovodrun --min-np/--max-np
--host-discovery-script`, Gloo only) restarts the collectives of the
surviving and new processes without restarting them; Horovod's loop, driver
and notifications are used as they are. What Horovod's TensorFlow layer
provides around them fails on Keras 3, and is replaced here:

- `KerasState` (state.py): the model's and optimizers' variables and the
  training progress, committed, restored and synced (Horovod's
  `TensorFlowKerasState` calls `optimizer.variables()`, a list in Keras 3);
- `run` and `is_collective_failure` (fit.py, errors.py): every failed
  collective of a Horovod op becomes `HorovodInternalError` (Horovod's
  mapping misses `HorovodGroupedAllreduce` and then returns None, so a
  survivor would end training early with exit code 0);
- `fit` (fit.py): each epoch's data in an order of the seed and epoch,
  resharded after every reset; the learning rate kept or scaled with the
  size (`rates`; Horovod's example uses `K.set_value(optimizer.lr)`,
  which Keras 3 lacks); the train function traced again after each reset;
  a resumed epoch's rest trained by resharding, where Horovod's
  `UpdateBatchStateCallback` shortens it through `params['steps']`, which
  Keras 3 only displays;
- the hosts-updated notice, which Horovod sends to rank 0 only, carried in
  the step's gradient allreduce so every rank commits after the same step
  (callback.py).

Example:

```python
import hvd_keras
import hvd_keras.elastic

hvd_keras.init()
model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1, momentum=0.9)),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
hvd_keras.exact_metrics(model)
hvd_keras.elastic.fit(model, x, y, batch_size=96, epochs=10)
```

`hvd-keras run --elastic --min-np 1 --max-np 4 --discovery-script ./hosts.sh train.py`
launches it.
"""

from hvd_keras import _api  # noqa: F401  (Keras's trainer hooked, as by any use of the public API)
from hvd_keras._compat import HorovodInternalError, HostsUpdatedInterrupt
from hvd_keras.elastic import rates
from hvd_keras.elastic.callback import ElasticCommit
from hvd_keras.elastic.data import epoch_order, ledger_batches, plan_segment
from hvd_keras.elastic.errors import classify, collective_failures, is_collective_failure
from hvd_keras.elastic.fit import DEFAULT_COMMIT_EVERY, fit, is_elastic, reset, run
from hvd_keras.elastic.state import KerasState

__all__ = [
    "DEFAULT_COMMIT_EVERY",
    "ElasticCommit",
    "HorovodInternalError",
    "HostsUpdatedInterrupt",
    "KerasState",
    "classify",
    "collective_failures",
    "epoch_order",
    "fit",
    "is_collective_failure",
    "is_elastic",
    "ledger_batches",
    "plan_segment",
    "rates",
    "reset",
    "run",
]
