"""Runs an example script, unedited, under `import hvd_keras.auto`; leaves this rank's final weights.

Usage: example_weights.py OUT_DIR SCRIPT [ARGS...]   (writes OUT_DIR/rank<r>.npz)
"""

import os
import runpy
import sys

import hvd_keras.auto  # noqa: F401  (the one line a user adds)
import numpy as np

import hvd_keras

out_dir, sys.argv = sys.argv[1], sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
names = runpy.run_path(sys.argv[0], run_name="__main__")
weights = names["model"].get_weights()
os.makedirs(out_dir, exist_ok=True)
np.savez(os.path.join(out_dir, f"rank{hvd_keras.rank()}.npz"), *weights)
