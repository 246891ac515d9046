#!/usr/bin/env python3
"""Fails when src/ modules import across layers the wrong way, or in a cycle, at any level.

The layers are written once, in src/lib.rs's doc comment: a bullet per layer, lowest first,
`//! - NAME: [`module`], [`module`] ...`. Every top-level module of src/ must be in one. A file
of a module (src/x.rs, or any file under src/x/) may import only modules of its own layer or a
lower one, and modules must not import each other in a cycle. Inside every folder the same
holds one level down: its files and subfolders must not import each other in a cycle (a name a
folder's mod.rs re-exports counts as the file it comes from). Every import form counts:
`crate::x`, `use crate::{x, y::z}`, `super::...` and `self::...` (resolved against the file's
own path). Test code counts too (`#[cfg(test)]` tails, `tests.rs`, `*_tests.rs`), so no test
helper sits above what it tests.
Usage: scripts/check_layers.py [--graph] [--root DIR]   (--graph prints the import edges;
--root checks another copy of the crate, as the tests do with an injected import)
"""
import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::super)*)::((?:\w+::)*(?:\{|\w+))")
REEXPORT = re.compile(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);")
PATH_ATTR = re.compile(r'#\[path\s*=\s*"([^"]+)"\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;')
INLINE_TEST = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*\{")
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


def module_path(root, path, declared):
    """The file's module path: src/http/proxy.rs -> [http, proxy]; src/http/mod.rs -> [http];
    a file a `#[path]` attribute names -> its declaring module's path and the declared name."""
    if path in declared:
        return declared[path]
    parts = os.path.relpath(path, root).split(os.sep)
    parts[-1] = parts[-1][:-3]
    if parts == ["lib"]:
        return []
    if parts[-1] == "mod":
        parts.pop()
    return parts


def strip_comments(text):
    """The text without `//` comments, so doc links are not imports."""
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def split_top(group):
    """`a, b::{c, d}, e` -> the three parts, commas inside braces kept."""
    parts, depth, cur = [], 0, ""
    for ch in group:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    return parts + [cur]


def expand(spelled):
    """`a::{b, c::d as e}` -> [(["a", "b"], "b"), (["a", "c", "d"], "e")]: each path and the name
    it binds."""
    out = []
    for part in split_top(spelled):
        part = " ".join(part.split())
        if not part or part == "*":
            continue
        alias = None
        if " as " in part and "{" not in part:
            part, alias = [s.strip() for s in part.rsplit(" as ", 1)]
        if "{" in part:
            head, inner = part.split("{", 1)
            head = [s for s in head.split("::") if s.strip()]
            for sub, name in expand(inner.rsplit("}", 1)[0]):
                out.append((head + sub, name or (head[-1] if head else None)))
            continue
        segs = [s.strip() for s in part.split("::") if s.strip() and s.strip() != "*"]
        if segs and segs[-1] == "self":
            # `a::{self}` names `a` itself, and binds its name.
            segs.pop()
        out.append((segs, alias or (segs[-1] if segs else None)))
    return out


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


def imports(text, own):
    """Every absolute path a file whose module path is `own` names, in every form. An inline
    `#[cfg(test)] mod NAME {` tail is module `own::NAME`, so its `super` is the file itself."""
    tail = INLINE_TEST.search(text)
    if tail:
        return imports(text[: tail.start()], own) + imports(text[tail.end() :], own + [tail.group(1)])
    found = []
    for m in PATH.finditer(text):
        head, supers, rest = m.group(1), m.group(2), m.group(3)
        if head == "crate":
            base = []
        elif head == "self":
            base = list(own)
        else:
            # `super` from src/x/y.rs is `x`; each further `super` climbs one more.
            n = 1 + supers.count("super")
            base = own[: max(len(own) - n, 0)]
        if rest.endswith("{"):
            rest = rest + brace_group(text, m.end() - 1) + "}"
        for path, _ in expand(rest):
            found.append(base + path)
    return found


class Crate:
    """The crate's module tree: which names are modules, and what each module re-exports."""

    def __init__(self, root):
        self.root = root
        self.files = {}  # module path (tuple) -> code
        declared = {}
        paths = []
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                if f.endswith(".rs"):
                    paths.append(os.path.join(dirpath, f))
        raw = {p: open(p, encoding="utf-8").read() for p in paths}
        for p in paths:
            own = module_path(root, p, {})
            # A `#[path]` is relative to the declaring file's directory.
            sub = os.path.dirname(p)
            for m in PATH_ATTR.finditer(raw[p]):
                declared[os.path.normpath(os.path.join(sub, m.group(1)))] = own + [m.group(2)]
        self.modules = set()
        for p in paths:
            own = module_path(root, p, declared)
            self.files[tuple(own)] = (os.path.relpath(p, root), strip_comments(raw[p]))
            for i in range(len(own) + 1):
                self.modules.add(tuple(own[:i]))
        self.reexports = {}
        for own, (_, code) in self.files.items():
            for m in REEXPORT.finditer(code):
                for path, name in expand(m.group(1)):
                    if not path or name is None:
                        continue
                    if path[0] == "crate":
                        target = path[1:]
                    elif path[0] == "super":
                        target = list(own[:-1]) + path[1:]
                    elif path[0] == "self":
                        target = list(own) + path[1:]
                    else:
                        target = list(own) + path
                    self.reexports[own + (name,)] = target

    def resolve(self, path):
        """The module path `path` lands in: its longest module prefix, re-exports followed."""
        for _ in range(8):
            k = 0
            while k < len(path) and tuple(path[: k + 1]) in self.modules:
                k += 1
            if k < len(path) and tuple(path[: k + 1]) in self.reexports:
                path = self.reexports[tuple(path[: k + 1])] + path[k + 1 :]
                continue
            return path[:k]
        return path


def find_cycles(edges):
    """Every cycle a depth-first search meets in `edges` ({node: {node: files}})."""
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

    nodes = set(edges) | {d for ds in edges.values() for d in ds}
    for m in sorted(nodes):
        if m not in state:
            visit(m)
    return cycles


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
    crate = Crate(root)
    # edges[folder][child] = {child it imports: files}; folder () is the crate.
    edges = {}
    for own, (rel, code) in sorted(crate.files.items()):
        for path in imports(code, list(own)):
            target = crate.resolve(path)
            k = 0
            while k < len(own) and k < len(target) and own[k] == target[k]:
                k += 1
            if k < len(own) and k < len(target):
                level = edges.setdefault(own[:k], {}).setdefault(own[k], {})
                level.setdefault(target[k], set()).add(rel)
    top = edges.get((), {})
    tops = {own[0] for own in crate.files if own}
    for m in sorted(tops - set(layer_of)):
        problems.append(f"module `{m}` has no layer: add it to the layer list in src/lib.rs")
    for src, dsts in sorted(top.items()):
        for dst, files in sorted(dsts.items()):
            if src in layer_of and dst in layer_of and layer_of[dst] > layer_of[src]:
                problems.append(
                    f"`{src}` ({layers[layer_of[src]][0]}) imports higher `{dst}` "
                    f"({layers[layer_of[dst]][0]}) in {', '.join(sorted(files))}"
                )
    for folder, level in sorted(edges.items()):
        where = "::".join(folder) + "::" if folder else ""
        for c in find_cycles(level):
            problems.append("import cycle: " + " -> ".join(where + m for m in c))
    if "--graph" in args:
        for folder, level in sorted(edges.items()):
            where = "::".join(folder) + "::" if folder else ""
            for src, dsts in sorted(level.items()):
                print(f"{where}{src} -> {', '.join(sorted(dsts))}")
    for p in problems:
        print(f"layers: {p}", file=sys.stderr)
    if problems:
        return 1
    folders = len([f for f in edges if f])
    print(
        f"layers: {len(tops)} modules in {len(layers)} layers (src/lib.rs) and {folders} folders: "
        "no upward import, no cycle at any level"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
