#!/usr/bin/env python3
"""Fails when src/ modules import across layers the wrong way, or in a cycle.

The layers are written once, in src/lib.rs's doc comment: a bullet per layer, lowest first,
`//! - NAME: [`module`], [`module`] ...`. Every top-level module of src/ must be in one. A file
of a module (src/x.rs, or any file under src/x/) may import only modules of its own layer or a
lower one, and modules must not import each other in a cycle. Every import form counts:
`crate::x`, `use crate::{x, y::z}` and `super::...` (resolved against the file's own path).
Usage: scripts/check_layers.py [--graph] [--root DIR]   (--graph prints the import edges;
--root checks another copy of the crate, as the tests do with an injected import)
"""
import os
import re
import sys

PATH = re.compile(r"\b((?:crate|super)(?:::super)*)::(\{|\w+)")
LIST_START = "Modules, in layers"
BULLET = re.compile(r"^//! - ([^:]+):(.*)$")
MODULE_REF = re.compile(r"\[`(\w+)`\]")


def read_layers(lib_rs):
    """[(layer name, [modules])] from lib.rs's doc comment, lowest layer first."""
    layers, in_list = [], False
    with open(lib_rs, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line.startswith("//!"):
                if in_list:
                    break
                continue
            if LIST_START in line:
                in_list = True
                continue
            if not in_list:
                continue
            bullet = BULLET.match(line)
            if bullet:
                layers.append((bullet.group(1).strip(), MODULE_REF.findall(bullet.group(2))))
            elif layers and line.startswith("//!   "):
                layers[-1][1].extend(MODULE_REF.findall(line))
    return layers


def module_path(root, path):
    """The file's module path: src/http/proxy.rs -> [http, proxy]; src/http/mod.rs -> [http]."""
    parts = os.path.relpath(path, root).split(os.sep)
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "mod":
        parts.pop()
    return parts


def code_lines(text):
    """The text without `#[cfg(test)]` tail modules and comments: tests may reach anywhere."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def brace_group(text, start):
    """The text inside the braces opening at `start`, nested braces included."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return text[start + 1:]


def imported_tops(text, own):
    """The top-level modules a file whose module path is `own` names, in every form."""
    tops = set()
    for m in PATH.finditer(text):
        prefix, head = m.group(1), m.group(2)
        segments = prefix.split("::")
        if segments[0] == "crate":
            base = []
        else:
            # `super` from src/x/y.rs is `x`; each further `super` climbs one more.
            base = own[: max(len(own) - len(segments), 0)]
        if head == "{":
            group = brace_group(text, m.end() - 1)
            names = [g.strip().split("::")[0] for g in re.split(r",(?![^{]*\})", group)]
            names = [n for n in names if n and n != "self"]
        else:
            names = [head]
        for name in names:
            path = base + [name]
            tops.add(path[0])
    return tops


def main():
    args = sys.argv[1:]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if "--root" in args:
        root = args[args.index("--root") + 1]
    layers = read_layers(os.path.join(root, "lib.rs"))
    layer_of = {m: i for i, (_, mods) in enumerate(layers) for m in mods}
    problems = []
    if not layers:
        problems.append("no layer list found in src/lib.rs's doc comment")
    edges, tops = {}, set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            # `X_tests.rs` and `tests.rs` are `#[cfg(test)]` modules in files of their own: test
            # code, which may reach anywhere, as the tails `code_lines` cuts.
            if not f.endswith(".rs") or f == "lib.rs" or f.endswith("_tests.rs") or f == "tests.rs":
                continue
            path = os.path.join(dirpath, f)
            own = module_path(root, path)
            src = own[0]
            tops.add(src)
            with open(path, encoding="utf-8") as fh:
                for dst in imported_tops(code_lines(fh.read()), own):
                    if dst != src:
                        edges.setdefault(src, {}).setdefault(dst, set()).add(os.path.relpath(path, root))
    modules = tops | {d for ds in edges.values() for d in ds}
    for m in sorted(modules - set(layer_of)):
        problems.append(f"module `{m}` has no layer: add it to the layer list in src/lib.rs")
    for src, dsts in sorted(edges.items()):
        for dst, files in sorted(dsts.items()):
            if src in layer_of and dst in layer_of and layer_of[dst] > layer_of[src]:
                problems.append(
                    f"`{src}` ({layers[layer_of[src]][0]}) imports higher `{dst}` "
                    f"({layers[layer_of[dst]][0]}) in {', '.join(sorted(files))}"
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
    if "--graph" in args:
        for src, dsts in sorted(edges.items()):
            print(f"{src} -> {', '.join(sorted(dsts))}")
    for p in problems:
        print(f"layers: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"layers: {len(modules)} modules in {len(layers)} layers (src/lib.rs), no upward import, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
