"""Keras callbacks for distributed training."""

from hvd_keras.callbacks.broadcast_initial_state import BroadcastInitialState

__all__ = ["BroadcastInitialState"]
