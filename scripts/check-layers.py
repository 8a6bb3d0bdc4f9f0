#!/usr/bin/env python3
"""Checks the worker's module graph against the layers written in its lib.rs.

lib.rs lists the layers top to bottom, one `//! - ` bullet each, naming its modules in
backticks. A module may use only modules of lower layers; two modules of one layer may
not use each other. Within the crate, no file may take part in an import circle.

References are `crate::a::b` and `super::…` paths in code (comments are skipped), with
`use crate::{a, b::{c, d}}` groups expanded. Exit status 1 with one line per violation.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "crates/worker/src")


def module_of(path: pathlib.Path) -> tuple:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def layers() -> list:
    """The `//! - ` bullets of lib.rs (with their continuation lines), top to bottom: a
    bullet's module is its first name in backticks; the `leaves` bullet names several
    (parenthesised text is prose)."""
    bullets = []
    for line in (SRC / "lib.rs").read_text().splitlines():
        if line.startswith("//! - "):
            bullets.append(line[6:])
        elif line.startswith("//!   ") and bullets:
            bullets[-1] += " " + line[6:].strip()
        elif not line.startswith("//!") or line.strip() == "//!":
            if bullets and line.strip() == "//!":
                break
    found = []
    for bullet in bullets:
        if bullet.startswith("leaves"):
            found.append(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", bullet)))
        else:
            found.append(re.findall(r"`([a-z_]+)`", bullet)[:1])
    return found


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] if "//" in line and '"' not in line.split("//")[0] else line
                     for line in text.splitlines() if not line.lstrip().startswith("//"))


def expand(path: str) -> list:
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    m = re.match(r"^([\w:]*?)::\{(.*)\}$", path, flags=re.S)
    if not m:
        return [path]
    head, body = m.group(1), m.group(2)
    items, depth, current = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        items.append(current.strip())
    out = []
    for item in items:
        for sub in expand(item):
            out.append(head if sub == "self" else f"{head}::{sub}")
    return out


def references(module: tuple, text: str) -> set:
    # Unit tests (at the end of a file) may use anything; `super` there is the file.
    code = strip_comments(text.split("#[cfg(test)]")[0])
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*);", code, flags=re.S):
        paths += expand(re.sub(r"\s+", "", m.group(1)))
    paths += re.findall(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", code)
    out = set()
    for path in paths:
        segs = [s.split(" as ")[0] for s in path.split("::")]
        if segs[0] == "crate":
            target = segs[1:]
        elif segs[0] == "super":
            base = list(module)
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            target = base + segs
        else:
            continue
        out.add(tuple(s for s in target if s not in ("*", "self")))
    return out


def main() -> int:
    files = {module_of(p): p for p in SRC.rglob("*.rs") if p.name != "main.rs"}
    known = set(files)
    order = layers()
    rank = {name: i for i, names in enumerate(order) for name in names}
    problems = []
    top_level = {m[0] for m in known if m}
    for name in sorted(top_level - set(rank)):
        problems.append(f"`{name}` is in no layer of lib.rs")
    edges = {m: set() for m in known}
    for module, path in files.items():
        for target in references(module, path.read_text()):
            # The longest module path the reference names (the rest is an item).
            while target and target not in known:
                target = target[:-1]
            if not target or target == module:
                continue
            edges[module].add(target)
            a, b = module[0] if module else None, target[0]
            if a and a != b and a in rank and b in rank:
                if rank[b] < rank[a]:
                    problems.append(f"{path}: `{a}` uses `{b}`, a layer above it")
                elif rank[b] == rank[a]:
                    problems.append(f"{path}: `{a}` uses `{b}`, of its own layer")
    # Circles between files.
    index, low, stack, on_stack, counter = {}, {}, [], set(), [0]
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                names = ", ".join(sorted("::".join(c) or "crate" for c in component))
                problems.append(f"import circle: {names}")

    for v in sorted(edges):
        if v not in index:
            visit(v)
    problems = list(dict.fromkeys(problems))
    for line in problems:
        print(line)
    if problems:
        print(f"check-layers: {len(problems)} problem(s) in {SRC}", file=sys.stderr)
        return 1
    print(f"check-layers: {len(files)} files, {sum(map(len, edges.values()))} imports, "
          f"{len(order)} layers, no upward import, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
