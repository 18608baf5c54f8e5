"""`python -m hvd_keras.auto script.py [args]`: run a plain Keras script distributed.

The same as adding `import hvd_keras.auto` at the top of the script.
"""

import os
import runpy
import sys

import hvd_keras.auto  # noqa: F401  (patches Keras)

if len(sys.argv) < 2:
    raise SystemExit("usage: python -m hvd_keras.auto script.py [args...]  "
                     "HINT: name the Keras script to run.")
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
