"""BroadcastInitialState callback."""

from hvd_keras._horovod import keras
from hvd_keras.broadcast import broadcast_state
from hvd_keras.runtime import size


class BroadcastInitialState(keras.callbacks.Callback):
    """Broadcasts the model and optimizer state from one rank when training begins.

    Ranks initialise their weights independently; this callback makes every
    rank start from `root_rank`'s weights and optimizer slots. It acts once,
    at the start of the first `fit` (after its first step for a model that
    only gets its weights then); later `fit` calls continue from state that
    is already identical.

    Args:
        root_rank: the rank whose state every rank receives.

    Example:

    ```python
    import hvd_keras

    model.fit(x, y, callbacks=[hvd_keras.callbacks.BroadcastInitialState()])
    ```
    """

    def __init__(self, root_rank=0):
        super().__init__()
        self.root_rank = root_rank
        self._done = False

    def on_train_begin(self, logs=None):
        # A subclassed model with its own train_step is built by its first
        # step; then the state is broadcast right after that step. The step
        # applied the same averaged gradients everywhere, so the ranks' slots
        # agree and the broadcast still leaves all ranks identical.
        if not self._done and self.model.variables:
            self._broadcast()

    def on_train_batch_end(self, batch, logs=None):
        if not self._done:
            self._broadcast()

    def _broadcast(self):
        if size() == 1:
            self._done = True  # nothing to agree on: one process behaves as without hvd_keras
            return
        broadcast_state(self.model, root_rank=self.root_rank)
        self._done = True
