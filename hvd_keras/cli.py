"""`hvd-keras`: the command line; a thin layer over hvd_keras.launcher."""

import argparse
import sys

from hvd_keras import launcher


def _parser():
    p = argparse.ArgumentParser(prog="hvd-keras", description="Launch hvd_keras training jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a training script on several processes (over horovodrun)",
                       allow_abbrev=False)
    r.add_argument("-np", "--num-proc", dest="np", type=int, help="number of processes")
    r.add_argument("-H", "--hosts", help="host:slots,host:slots")
    r.add_argument("--hostfile", help="file with one `host slots=N` per line")
    ctl = r.add_mutually_exclusive_group()
    ctl.add_argument("--gloo", dest="controller", action="store_const", const="gloo")
    ctl.add_argument("--mpi", dest="controller", action="store_const", const="mpi")
    sl = r.add_mutually_exclusive_group()
    sl.add_argument("--slurm", dest="slurm", action="store_const", const="force",
                    help="require a Slurm allocation and take hosts from it")
    sl.add_argument("--no-slurm", dest="slurm", action="store_const", const="off")
    r.add_argument("--gpus", action="store_true",
                   help="one process per GPU: check -np against this host's GPUs and set NCCL's variables")
    r.add_argument("--dry-run", action="store_true", help="print the command and environment, run nothing")
    r.add_argument("script")
    r.add_argument("script_args", nargs=argparse.REMAINDER)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    config = launcher.LaunchConfig(
        script=args.script, script_args=tuple(args.script_args), np=args.np, hosts=args.hosts,
        hostfile=args.hostfile, controller=args.controller, slurm=args.slurm or "auto", gpus=args.gpus,
        dry_run=args.dry_run,
    )
    try:
        return launcher.run(config)
    except (launcher.LaunchError, RuntimeError) as e:
        print(f"hvd-keras: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
