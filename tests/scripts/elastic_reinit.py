"""Horovod started, shut down and started again, as an elastic reset does (tests/test_elastic.py)."""

import horovod.tensorflow as hvd

hvd.init()
hvd.shutdown()
hvd.init()
print(f"RESTARTED size {hvd.size()}", flush=True)
