"""`hvd-keras`: the command line; a thin layer over hvd_keras.launcher."""

import argparse
import dataclasses
import sys

from hvd_keras import launcher


def _parser():
    p = argparse.ArgumentParser(prog="hvd-keras", description="Launch hvd_keras training jobs and plan their scaling.")
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
    r.add_argument("--network-interface", help="the network interface(s) ranks talk over, e.g. eth0 or ib0 "
                   "(passed to horovodrun; skips its probe of every host)")
    r.add_argument("--gpus", action="store_true",
                   help="one process per GPU: check -np against this host's GPUs and set NCCL's variables")
    r.add_argument("--dry-run", action="store_true", help="print the command and environment, run nothing")
    e = r.add_argument_group("elastic training (Gloo; hosts from a discovery script)")
    e.add_argument("--elastic", action="store_true",
                   help="let the job shrink when a worker fails and grow when hosts appear (horovodrun elastic)")
    e.add_argument("--min-np", type=int, help="fewest processes to train on (default: -np)")
    e.add_argument("--max-np", type=int, help="most processes to train on (default: no limit)")
    e.add_argument("--discovery-script", help="executable printing the available hosts, one `host:slots` per line")
    e.add_argument("--slots-per-host", type=int, help="slots of a discovered host printed without them")
    e.add_argument("--blacklist-cooldown-range", nargs=2, type=int, metavar=("LOW", "HIGH"),
                   help="seconds a failed host stays out before it may come back")
    e.add_argument("--reset-limit", type=int, help="most resets before the job fails")
    e.add_argument("--elastic-timeout", type=int, help="seconds to wait for --min-np processes")
    r.add_argument("script")
    r.add_argument("script_args", nargs=argparse.REMAINDER)

    sub.add_parser("discover-hosts", help="print this Slurm allocation's usable nodes as `host:slots` lines "
                   "(an elastic job's discovery script)")

    b = sub.add_parser("bench-allreduce", help="measure the allreduce cost of these hosts for `plan`")
    b.add_argument("-np", "--num-proc", dest="np", type=int, default=2, help="number of processes (default 2)")
    b.add_argument("-H", "--hosts", help="host:slots,host:slots")
    ctl = b.add_mutually_exclusive_group()
    ctl.add_argument("--gloo", dest="controller", action="store_const", const="gloo")
    ctl.add_argument("--mpi", dest="controller", action="store_const", const="mpi")
    b.add_argument("-o", "--output", default="link.json", help="where the fitted link goes (default link.json)")
    b.add_argument("--repeats", type=int, default=10, help="timed allreduces per message size")

    h = sub.add_parser("build-horovod", help="build horovod 0.28.1 against this environment's TensorFlow and "
                       "install it (cached)")
    dev = h.add_mutually_exclusive_group()
    dev.add_argument("--gpu", dest="device", action="store_const", const="gpu",
                     help="with CUDA and NCCL (default when nvidia-smi lists a GPU)")
    dev.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="MPI and Gloo only")
    h.add_argument("--cuda-from-wheels", action="store_true",
                   help="with --gpu: compile with PyPI's CUDA 13 nvcc (needs NVIDIA driver >= 580)")
    h.add_argument("--no-cache", action="store_true", help="build even when the cache has this build")
    h.add_argument("--dry-run", action="store_true", help="print what would be built, build nothing")

    sub.add_parser("doctor", help="check that this environment can run hvd_keras; exit 1 on a blocker")

    q = sub.add_parser("plan", help="predict step time, samples/s and scaling efficiency at 1 to N ranks")
    q.add_argument("--profile", help="a Profile JSON (hvd_keras.planner.profile(...).save(path))")
    q.add_argument("--step-ms", type=float, help="compute time of one step on one process, in ms")
    q.add_argument("--gradient-mb", type=float, help="gradients per step, in MB (4 bytes per float32 weight)")
    q.add_argument("--batch-size", type=int, help="samples per step on each rank")
    q.add_argument("--step-spread-ms", type=float,
                   help="standard deviation of one step's time, in ms (the wait for the slowest rank; "
                        "default: the profile's, or 0)")
    q.add_argument("--link", help="a link JSON from bench-allreduce")
    q.add_argument("--latency-us", type=float, help="published link latency, in us (instead of --link)")
    q.add_argument("--gbit", type=float, help="published link bandwidth, in Gbit/s (instead of --link)")
    q.add_argument("--overlap", type=float, default=0.0,
                   help="share of the allreduce hidden behind compute (0: hvd_keras; default)")
    q.add_argument("--max-np", type=int, default=512, help="largest number of ranks in the table")
    return p


def _check(flag, value, ok, expected, hint):
    if value is not None and not ok(value):
        raise ValueError(f"{flag} must be {expected}. Received: {flag} {value}. HINT: {hint}")


def _given(args, *names):
    given = [f"--{n.replace('_', '-')} {getattr(args, n)}" for n in names if getattr(args, n) is not None]
    return ", ".join(given) or "none of them"


def _plan(args):
    from hvd_keras import planner

    _check("--step-ms", args.step_ms, lambda v: v > 0, "> 0", "one process's compute time per step, in ms.")
    _check("--gradient-mb", args.gradient_mb, lambda v: v >= 0, ">= 0",
           "4 bytes per float32 weight: 25.6 for 6.4 million weights.")
    _check("--batch-size", args.batch_size, lambda v: v >= 1, ">= 1", "samples per step on each rank.")
    _check("--step-spread-ms", args.step_spread_ms, lambda v: v >= 0, ">= 0", "0 for steps that all take as long.")
    _check("--latency-us", args.latency_us, lambda v: v >= 0, ">= 0", "the link's one-way latency, in us.")
    _check("--gbit", args.gbit, lambda v: v > 0, "> 0", "the link's bandwidth, in Gbit/s (25 for 25GbE).")
    _check("--overlap", args.overlap, lambda v: 0 <= v <= 1, "in [0, 1]", "0 for hvd_keras.")
    _check("--max-np", args.max_np, lambda v: v >= 1, ">= 1", "the largest number of ranks to plan for, e.g. 512.")
    if args.link:
        link = planner.Link.load(args.link)
    elif args.latency_us is not None and args.gbit is not None:
        link = planner.Link.from_figures(args.latency_us, args.gbit)
    else:
        raise ValueError(f"plan needs --link link.json (from `hvd-keras bench-allreduce`) or both --latency-us "
                         f"and --gbit. Received: {_given(args, 'latency_us', 'gbit')}. "
                         "HINT: hvd-keras bench-allreduce -np 2 -o link.json")
    if args.profile:
        profile = planner.Profile.load(args.profile)
    elif None not in (args.step_ms, args.gradient_mb, args.batch_size):
        profile = planner.Profile(args.step_ms / 1e3, int(args.gradient_mb * 1e6), args.batch_size)
    else:
        raise ValueError("plan needs --profile prof.json or all of --step-ms, --gradient-mb and --batch-size. "
                         f"Received: {_given(args, 'step_ms', 'gradient_mb', 'batch_size')}. "
                         "HINT: hvd_keras.planner.profile(model, x, y, batch_size).save('prof.json')")
    if args.step_spread_ms is not None:
        profile = dataclasses.replace(profile, step_seconds_spread=args.step_spread_ms / 1e3)
    sizes = [n for n in planner.DEFAULT_SIZES if n <= args.max_np]
    if args.max_np not in sizes:
        sizes.append(args.max_np)
    print(planner.predict(profile, link, sizes, args.overlap))
    return 0


def _bench_allreduce_config(args):
    if args.np is None or args.np < 2 or args.repeats < 1:
        raise launcher.LaunchError(
            f"bench-allreduce needs 2 or more processes and 1 or more repeats. Received: -np {args.np} "
            f"--repeats {args.repeats}. HINT: -np 2 measures one host; -np with the slots of several hosts "
            "(-H) measures the network.")
    return launcher.LaunchConfig(script=None, module="hvd_keras._bench_allreduce",
                                 script_args=(args.output, str(args.repeats)), np=args.np, hosts=args.hosts,
                                 controller=args.controller)


def _run_config(args):
    return launcher.LaunchConfig(
        script=args.script, script_args=tuple(args.script_args), np=args.np, hosts=args.hosts,
        hostfile=args.hostfile, controller=args.controller, network_interface=args.network_interface,
        slurm=args.slurm or "auto", gpus=args.gpus,
        dry_run=args.dry_run,
        elastic=args.elastic, min_np=args.min_np, max_np=args.max_np, discovery_script=args.discovery_script,
        slots_per_host=args.slots_per_host,
        cooldown_range=tuple(args.blacklist_cooldown_range) if args.blacklist_cooldown_range else None,
        reset_limit=args.reset_limit, elastic_timeout=args.elastic_timeout,
    )


def _build_horovod(args):
    from hvd_keras import horovod_build

    device = args.device or horovod_build.detect_device()
    if args.cuda_from_wheels and device != "gpu":
        raise horovod_build.BuildError("--cuda-from-wheels is for the GPU build. Received: --cuda-from-wheels "
                                       "without --gpu on a machine without GPUs. HINT: add --gpu.")
    horovod_build.build(device, use_cache=not args.no_cache, cuda_from_wheels=args.cuda_from_wheels,
                        dry_run=args.dry_run)
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from hvd_keras import doctor

        return doctor.main()
    if args.command == "discover-hosts":
        from hvd_keras.cluster import discovery

        return discovery.main()
    if args.command == "build-horovod":
        from hvd_keras import horovod_build

        try:
            return _build_horovod(args)
        except horovod_build.BuildError as e:
            horovod_build.say(f"error: {e}", sys.stderr)
            return 2
    if args.command == "plan":
        try:
            return _plan(args)
        except (ValueError, OSError) as e:
            print(f"hvd-keras: error: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 2
    try:
        return launcher.run(_bench_allreduce_config(args) if args.command == "bench-allreduce" else _run_config(args))
    except (launcher.LaunchError, RuntimeError) as e:
        print(f"hvd-keras: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
