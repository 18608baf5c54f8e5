"""Checked access to Keras 3 on TensorFlow and to Horovod's TensorFlow layer.

Every hvd_keras module gets `keras`, `tf` and `hvd` from here, so that the two
preconditions (TensorFlow backend, horovod built with TensorFlow) are checked
in one place and fail with one line that names the fix.
"""

import os
import re
import subprocess
import sys

from hvd_keras._keras_config import configured_backend as _configured_backend


def check_backend():
    backend, source = _configured_backend()
    if backend != "tensorflow":
        raise ImportError(
            "hvd_keras needs the TensorFlow backend of Keras 3. "
            f"Received: backend={backend!r} (from {source}). "
            "HINT: set KERAS_BACKEND=tensorflow before starting Python."
        )


# What TensorFlow's native libraries print while they load, before absl's
# logging is initialised, whatever TF_CPP_MIN_LOG_LEVEL says: the absl
# notice, and INFO (I...) or WARNING (W...) lines such as "oneDNN custom
# operations are on". Each process prints them twice, so a job prints them
# twice per rank before its first line of training.
_ABSL_NOTICE = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$")
_ABSL_LINE = {1: re.compile(r"^I\d{4} "), 2: re.compile(r"^[IW]\d{4} "), 3: re.compile(r"^[IWE]\d{4} ")}


# Run in a process of its own while TensorFlow loads: it passes fd 2's lines
# on as they come, less the hidden ones. Should TensorFlow's native code
# crash the importing process, this one still drains what was written.
_FILTER = r"""
import re, sys
notice, hidden = re.compile(sys.argv[1]), re.compile(sys.argv[2])
for line in sys.stdin.buffer:
    text = line.decode(errors="replace")
    if not (notice.match(text.rstrip("\n")) or hidden.match(text)):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
"""


def import_tensorflow_quietly(environ=os.environ):
    """Imports keras and TensorFlow with TF_CPP_MIN_LOG_LEVEL applied to their start-up lines too.

    Only when TensorFlow is not imported yet and the level is 1 or more
    (the user asked for fewer logs); every other line printed meanwhile is
    passed on, in order, also when the import crashes the process.
    """
    try:
        level = int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if "tensorflow" in sys.modules or level < 1:
        import keras  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    filtering = subprocess.Popen([sys.executable, "-S", "-c", _FILTER, _ABSL_NOTICE.pattern,
                                  _ABSL_LINE[min(level, 3)].pattern], stdin=read_end, stderr=saved,
                                 stdout=subprocess.DEVNULL, close_fds=True)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)  # the pipe's last writer closes: the filter drains it and ends
        os.close(saved)
        filtering.wait()


check_backend()
try:
    import_tensorflow_quietly()
except ImportError as e:
    if "tensorflow" not in str(e):
        raise
    raise ImportError(
        "hvd_keras needs TensorFlow 2.16 to 2.21. "
        f"Received: {str(e).splitlines()[0]}. HINT: pip install 'tensorflow-cpu>=2.16,<2.22' (CPUs) or "
        "'tensorflow[and-cuda]>=2.16,<2.22' (GPUs), then hvd-keras build-horovod."
    ) from None

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

if keras.backend.backend() != "tensorflow":  # a backend set programmatically
    raise ImportError(
        "hvd_keras needs the TensorFlow backend of Keras 3. "
        f"Received: backend={keras.backend.backend()!r}. "
        "HINT: set KERAS_BACKEND=tensorflow before importing keras."
    )

try:
    import horovod.tensorflow as hvd  # noqa: E402
except ImportError as e:  # horovod missing, or built without TensorFlow
    raise ImportError(
        f"hvd_keras needs horovod 0.28.1 built against this TensorFlow ({tf.__version__}). "
        f"Received: `import horovod.tensorflow` failed ({str(e).splitlines()[0]}). "
        "HINT: run `hvd-keras build-horovod` in this environment (it builds and caches horovod for the "
        "installed TensorFlow, MPI and GPUs); `hvd-keras doctor` shows what else is missing."
    ) from None

__all__ = ["hvd", "keras", "tf"]
