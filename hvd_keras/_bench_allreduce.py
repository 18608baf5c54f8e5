"""`python -m hvd_keras._bench_allreduce OUT [REPEATS]`: what `hvd-keras bench-allreduce` runs on every rank."""

import sys

from hvd_keras import planner

if __name__ == "__main__":
    planner.measure_main(sys.argv[1:])
