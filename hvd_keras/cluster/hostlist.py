"""Slurm's compressed node and task lists, expanded without Slurm.

Written here rather than taken from python-hostlist (GPL-2.0+, not
compatible with this project's Apache-2.0 license). Tested against
`scontrol show hostnames`.
"""

import re

_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def _split_top_level(text):
    """Splits on commas that are not inside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _expand_range(spec, text):
    values = []
    for item in spec.split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {item!r} in node list {text!r}")
            width = len(lo)
            values += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        elif item.isdigit():
            values.append(item)
        else:
            raise ValueError(f"bad range {item!r} in node list {text!r}")
    return values


def _expand_one(name, text):
    start = name.find("[")
    if start < 0:
        return [name]
    end = name.index("]", start)
    head, spec, tail = name[:start], name[start + 1:end], name[end + 1:]
    if tail and "[" not in tail:
        # Slurm rejects text after the last bracket group ("c[1-2]d").
        raise ValueError(f"text after the last ']' in node list {text!r}")
    return [head + v + rest for v in _expand_range(spec, text) for rest in _expand_one(tail, text)]


def expand_hostlist(text):
    """Expands a Slurm node list: `node[001-003,007],gpu-b3` -> `['node001', ...]`.

    Order is kept and duplicates are kept, as `scontrol show hostnames` does.
    """
    if not text or not text.strip():
        raise ValueError("empty node list")
    hosts = []
    for part in _split_top_level(text.strip()):
        hosts += _expand_one(part, text)
    return hosts


def expand_tasks_per_node(text):
    """Expands `SLURM_TASKS_PER_NODE`: `2(x3),1` -> `[2, 2, 2, 1]`."""
    counts = []
    for part in text.split(","):
        match = _TASKS.match(part.strip())
        if not match:
            raise ValueError(f"bad SLURM_TASKS_PER_NODE entry {part!r} in {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts
