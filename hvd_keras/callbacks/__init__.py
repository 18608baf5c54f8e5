"""Keras callbacks for distributed training, one class per module."""

from hvd_keras.callbacks.broadcast_initial_state import BroadcastInitialState
from hvd_keras.callbacks.checkpoint import Checkpoint
from hvd_keras.callbacks.learning_rate_warmup import LearningRateWarmup
from hvd_keras.callbacks.metric_average import MetricAverage
from hvd_keras.callbacks.rank_agreement import RankAgreement
from hvd_keras.callbacks.throughput import Throughput

__all__ = ["BroadcastInitialState", "Checkpoint", "LearningRateWarmup", "MetricAverage", "RankAgreement", "Throughput"]
