"""Benchmark: Horovod's threads scheduled SCHED_IDLE (hvd_keras's default on CPUs) against the normal policy.

hvd_keras on 2 ranks, Gloo and MPI, on bench/peers.py's communication-bound
MLP and compute-bound CNN (same models, batches and threads: one intra-op and
one inter-op TensorFlow thread per rank), with `HVD_KERAS_HOROVOD_THREADS`
set to `idle` and to `normal`. Each round launches every variant once, the
order reversed every other round; samples/s medians (min-max) and the median
of the per-round ratios idle / normal.

    .venv/bin/python bench/background.py [--rounds 5] [--models mlp,cnn] [--controllers gloo,mpi] [--no-pin]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import peers  # noqa: E402

POLICIES = ("idle", "normal")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--controllers", default="gloo,mpi")
    p.add_argument("--no-pin", action="store_true", help="leave the ranks' placement to the kernel")
    return p.parse_args()


def main(args):
    started = time.time()
    print(_harness.machine_line())
    print(f"2 ranks, {'unpinned' if args.no_pin else 'each pinned to its own core'}, {args.rounds} rounds; "
          "samples/s median (min-max)")
    print("| model | controller | idle (hvd_keras's default) | normal | idle / normal |\n| --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        for controller in args.controllers.split(","):
            def run(policy):
                result = peers.launch(f"hvd-{controller}", name, pin=not args.no_pin,
                                      extra_env={"HVD_KERAS_HOROVOD_THREADS": policy})
                if "error" in result:
                    sys.exit(f"{name} {controller} {policy}: {result['error']}")
                return result["samples_per_sec"]

            got = _harness.interleave({p: (lambda p=p: run(p)) for p in POLICIES}, args.rounds)
            ratio = _harness.fmt(_harness.ratios(got["idle"], got["normal"]), 3)
            print(f"| {name} | {controller} | {_harness.fmt(got['idle'])} | {_harness.fmt(got['normal'])} "
                  f"| {ratio} |", flush=True)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main(parse_args())
