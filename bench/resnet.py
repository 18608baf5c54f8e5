"""Benchmark: a ResNet-style CNN, hvd_keras `fit` against plain Keras `fit`, XLA off and on.

At 1 rank every variant runs in one process: plain Keras and hvd_keras
(`DistributedOptimizer`, nothing sent at size 1), each with XLA off and on;
the hvd_keras/Keras ratio should be >= 0.97. At 2 ranks (`--np 2`) the job
times hvd_keras with XLA off and on (the XLA step is split around the
allreduce). Rounds interleave the variants; medians with min-max.

    .venv/bin/python bench/resnet.py                  # 1 rank, the device TensorFlow picks
    .venv/bin/python bench/resnet.py --np 2 --controller mpi

It runs wherever TensorFlow runs; on a GPU machine each rank takes its own
GPU (`hvd_keras.init()`), and `--precision mixed_float16` is the usual GPU
setting. Synthetic data; nothing is downloaded.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--np", type=int, default=1)
    p.add_argument("--controller", choices=["gloo", "mpi"], default="gloo")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=3, help="residual blocks per stage (3: ResNet-20)")
    p.add_argument("--precision", default="float32")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads per rank (0: default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def resnet(keras, image_size, blocks, classes=10, widths=(16, 32, 64)):
    layers = keras.layers

    def conv_bn(x, filters, kernel, stride=1, relu=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    inputs = keras.Input((image_size, image_size, 3))
    x = conv_bn(inputs, widths[0], 3)
    for stage, width in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x if stride == 1 and x.shape[-1] == width else conv_bn(x, width, 1, stride, relu=False)
            y = conv_bn(x, width, 3, stride)
            y = conv_bn(y, width, 3, relu=False)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def worker(args):
    import keras
    import numpy as np
    import tensorflow as tf

    import hvd_keras

    if args.threads:
        _harness.set_threads(tf, args.threads, 2)
    hvd_keras.init()
    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    size = hvd_keras.size()
    rng = np.random.default_rng(hvd_keras.rank())
    n = args.steps * args.batch_size
    x = rng.normal(size=(n, args.image_size, args.image_size, 3)).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    timer = _harness.epoch_timer(keras)

    def make(distributed, xla):
        keras.utils.set_random_seed(0)
        model = resnet(keras, args.image_size, args.blocks)
        opt = keras.optimizers.SGD(0.01 * size, momentum=0.9)
        model.compile(optimizer=hvd_keras.DistributedOptimizer(opt) if distributed else opt,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=xla)
        hvd_keras.broadcast_state(model)

        def run():
            model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            return size * n / timer.elapsed

        run()  # trace and compile
        return run

    variants = {}
    for xla in (False, True):
        tag = "xla" if xla else "no-xla"
        if size == 1:
            variants[f"keras {tag}"] = make(False, xla)
        variants[f"hvd_keras {tag}"] = make(True, xla)
    results = _harness.interleave(variants, args.rounds)
    if hvd_keras.is_chief():
        _harness.report({"results": results, "size": size,
                         "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU"})


def main(args):
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("np", "controller", "worker")]
    data = _harness.run_ranks(args.np, os.path.abspath(__file__), forwarded, controller=args.controller)
    results = data["results"]
    print(f"ResNet-style CNN ({args.blocks} blocks per stage, {args.image_size}x{args.image_size}), "
          f"{data['size']} rank(s) on {data['device']}, per-rank batch {args.batch_size}, {args.precision}, "
          f"{args.steps} steps x {args.rounds} rounds; global samples/s, median (min-max):")
    for name, values in results.items():
        print(f"  {name:<20} {_harness.fmt(values)}")
    for tag in ("no-xla", "xla"):
        if f"keras {tag}" in results:
            r = _harness.ratios(results[f"hvd_keras {tag}"], results[f"keras {tag}"])
            print(f"  hvd_keras/keras {tag:<7} {_harness.fmt(r, 3)}")
    r = _harness.ratios(results["hvd_keras xla"], results["hvd_keras no-xla"])
    print(f"  XLA on/off (hvd_keras) {_harness.fmt(r, 3)}")


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else main(arguments)
