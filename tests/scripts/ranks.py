"""Records this process's rank and the job size."""

import _common

import hvd_keras  # noqa: E402

hvd_keras.init()
_common.save_result(_common.arg("out"), hvd_keras.rank(), size=hvd_keras.size(), my_rank=hvd_keras.rank())
