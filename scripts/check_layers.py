#!/usr/bin/env python3
"""Fails when src/ modules import across layers the wrong way, or in a cycle.

Every top-level module of src/ has a layer (LAYERS below, lowest first). A module may import
(`crate::name`) only modules of a lower layer or of its own. Modules of one layer must not form
a cycle either. A module missing from LAYERS is an error too, so a new file gets placed.
Usage: scripts/check_layers.py [--graph]   (--graph prints the import edges)
"""
import os
import re
import sys

LAYERS = [
    ("base", ["clock", "config", "error", "events", "latency", "logging", "out", "addr", "budget", "net", "stack", "h1", "tls", "tls_stream", "proxy_protocol"]),
    ("health state", ["health"]),
    ("backend", ["backend"]),
    ("selection", ["balancer"]),
    ("reaching backends, checks, rendering", ["upstream", "checker", "stats", "registry", "park", "pool", "relay", "tunnel", "tls_accept", "signals"]),
    ("modes and operations", ["tcp", "http", "admin", "discovery", "dummy", "simulate"]),
    ("process", ["takeover", "acceptor", "server", "cli"]),
]

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
USE = re.compile(r"\bcrate::(\w+)")


def top_module(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def code_lines(text):
    """The text without `#[cfg(test)]` tail modules and comments: tests may reach anywhere."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def main():
    layer_of = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    edges = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            # `X_tests.rs` is X's `#[cfg(test)]` module in a file of its own: test code, which
            # may reach anywhere, as the tails `code_lines` cuts.
            if not f.endswith(".rs") or f == "lib.rs" or f.endswith("_tests.rs"):
                continue
            path = os.path.join(dirpath, f)
            src = top_module(path)
            with open(path, encoding="utf-8") as fh:
                for dst in USE.findall(code_lines(fh.read())):
                    if dst != src:
                        edges.setdefault(src, {}).setdefault(dst, set()).add(os.path.relpath(path, ROOT))
    problems = []
    modules = set(edges) | {d for ds in edges.values() for d in ds}
    for m in sorted(modules - set(layer_of)):
        problems.append(f"module `{m}` has no layer: add it to LAYERS in scripts/check_layers.py")
    for src, dsts in sorted(edges.items()):
        for dst, files in sorted(dsts.items()):
            if src in layer_of and dst in layer_of and layer_of[dst] > layer_of[src]:
                problems.append(
                    f"`{src}` ({LAYERS[layer_of[src]][0]}) imports higher `{dst}` "
                    f"({LAYERS[layer_of[dst]][0]}) in {', '.join(sorted(files))}"
                )
    # Cycles among modules (within a layer, or anywhere): depth-first search.
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, {})):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    for c in cycles:
        problems.append("import cycle: " + " -> ".join(c))
    if "--graph" in sys.argv:
        for src, dsts in sorted(edges.items()):
            print(f"{src} -> {', '.join(sorted(dsts))}")
    for p in problems:
        print(f"layers: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"layers: {len(modules)} modules in {len(LAYERS)} layers, no upward import, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
