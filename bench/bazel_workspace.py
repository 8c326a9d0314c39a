"""The genrule workspace bench/bazel.py builds: `actions` genrules in layers, each action of a
layer reading three outputs of the layer below, so Bazel walks a real dependency graph (a
cold build cannot run everything at once) while every action stays cheap and deterministic.

Outputs are a line naming the action, the digest of its inputs, and filler bytes; their sizes
spread geometrically from 256 B to `largest` (256 KiB unless told) in a fixed shuffled order,
so downloads mix small and larger blobs the way a build's outputs do, while the RPCs rather
than the bytes dominate. Genrules only: they build offline.
"""

import random
from pathlib import Path

LAYERS = 11
SMALLEST = 256
LARGEST = 256 * 1024
FAN_IN = 3


def layer_widths(actions: int, layers: int = LAYERS) -> list[int]:
    """`actions` split into at most `layers` layers, as even as possible, wider ones first."""
    layers = max(1, min(layers, actions))
    base, extra = divmod(actions, layers)
    return [base + (1 if i < extra else 0) for i in range(layers)]


def output_sizes(actions: int, largest: int = LARGEST, seed: int = 16) -> list[int]:
    ratio = (max(largest, SMALLEST) / SMALLEST) ** (1 / max(actions - 1, 1))
    sizes = [int(SMALLEST * ratio**i) for i in range(actions)]
    random.Random(seed).shuffle(sizes)
    return sizes


def write(root: Path, actions: int, largest: int = LARGEST) -> list[str]:
    """Write WORKSPACE and BUILD under `root`; the labels of the `actions` genrules."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "WORKSPACE").write_text('workspace(name = "bench")\n')
    sizes = iter(output_sizes(actions, largest))
    rules: list[str] = []
    labels: list[str] = []
    below: list[str] = []
    for layer, width in enumerate(layer_widths(actions)):
        names = [f"l{layer}_{i}" for i in range(width)]
        for i, name in enumerate(names):
            filler = f"head -c {next(sizes)} /dev/zero | tr -c a a >> $@"
            if below:
                srcs = sorted({below[(i + k) % len(below)] for k in range(FAN_IN)})
                src_list = ", ".join(f'":{s}"' for s in srcs)
                cmd = f"echo {name} > $@ && cat $(SRCS) | sha256sum >> $@ && {filler}"
                rules.append(
                    f'genrule(\n    name = "{name}",\n    srcs = [{src_list}],\n'
                    f'    outs = ["{name}.txt"],\n    cmd = "{cmd}",\n)\n'
                )
            else:
                cmd = f"echo {name} > $@ && {filler}"
                rules.append(
                    f'genrule(\n    name = "{name}",\n    outs = ["{name}.txt"],\n    cmd = "{cmd}",\n)\n'
                )
            labels.append(f"//:{name}")
        below = names
    (root / "BUILD").write_text("\n".join(rules))
    return labels
