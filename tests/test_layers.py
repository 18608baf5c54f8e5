"""The package's import graph: no module imports one above it, and none runs back up through a cycle.

Read from the source (every import, those inside functions too), so that a
lazy import that hides a cycle from Python is caught as well.
"""

import ast
import os

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "hvd_keras")
# The layers, lowest first: a module may import its own layer and those below.
LAYERS = [
    {"hvd_keras._version", "hvd_keras._keras_config", "hvd_keras._elf", "hvd_keras._deprecation"},
    {"hvd_keras.cluster", "hvd_keras.cluster.hostlist", "hvd_keras.cluster.job", "hvd_keras.cluster.slurm",
     "hvd_keras.cluster.host", "hvd_keras.cluster.discovery", "hvd_keras.placement", "hvd_keras.scheduling", "hvd_keras.horovod_build",
     "hvd_keras.launch_output"},
    # The launcher asks _compat whether a controller is built, only when asked to check.
    {"hvd_keras._horovod", "hvd_keras._compat", "hvd_keras.launcher", "hvd_keras.watchdog", "hvd_keras.runtime"},
    {"hvd_keras.preemption", "hvd_keras.seeds", "hvd_keras.broadcast", "hvd_keras.optimizer", "hvd_keras.metrics",
     "hvd_keras.pipeline", "hvd_keras.data", "hvd_keras.schedules", "hvd_keras.output"},
    {"hvd_keras.layers", "hvd_keras.layers.sync_batch_normalization"},
    {"hvd_keras.train_function", "hvd_keras.checkpoint"},
]
# Everything else (callbacks, auto, the CLI, doctor, planner, layers, _api) is a feature on top.


def _modules():
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


def _imports(path, modules):
    def known(name):
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {known(a.name) for a in node.names if a.name.startswith("hvd_keras")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hvd_keras"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in modules else known(node.module))
    return found


def _layer(module):
    return next((i for i, layer in enumerate(LAYERS) if module in layer), len(LAYERS))


def test_no_module_imports_one_above_it_or_the_package():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for imported in _imports(path, modules) - {module}:
            if module != "hvd_keras" and imported == "hvd_keras":
                wrong.append(f"{module} imports the package itself")
            elif _layer(imported) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m, "hvd_keras"} for m, p in modules.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_every_module_is_in_a_layer_or_a_feature():
    # A new core module must be placed: the lists above are the design.
    features = ("hvd_keras.callbacks", "hvd_keras.auto", "hvd_keras.elastic", "hvd_keras.cli",
                "hvd_keras.doctor",
                "hvd_keras.planner", "hvd_keras._bench_allreduce", "hvd_keras._api")
    unplaced = [m for m in _modules() if m != "hvd_keras" and _layer(m) == len(LAYERS)
                and not m.startswith(features)]
    assert not unplaced, unplaced
