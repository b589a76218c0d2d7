#!/usr/bin/env python3
"""Module-dependency listing of src/ and a check that it has no cycle.

Each file under src/ is one module (`a/mod.rs` and `a.rs` are `a`; `#[cfg(test)]` test files such as
`x_tests.rs` are left out, and so are `#[cfg(test)] mod tests` blocks). An edge A -> B is any path
`crate::B...`, `super::...`, `self::...` or `child::...` in A that resolves to the module B (the
longest prefix that is a file module); a parent using its child counts like any other edge, so a
child that reaches back to its parent makes a cycle. Prints the modules in dependency order with what each uses, then every strongly
connected component of more than one module; exits 1 if there is one.

    python3 scripts/modgraph.py [--dot]
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def modules():
    mods = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                continue
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel[-1].endswith("_tests"):
                continue
            mods["::".join(rel)] = path
    return mods


def strip(text):
    # One left-to-right pass, so a quote inside a comment or a `"` char literal cannot start a
    # string: comments go, string and char literals become empty.
    lexeme = re.compile(
        r'//[^\n]*|/\*.*?\*/|(?<![\w])b?r(#*)".*?"\1|b?"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)\'',
        flags=re.S,
    )
    text = lexeme.sub(lambda m: " " if m.group(0).startswith("/") else '""', text)
    # Drop `#[cfg(test)] mod name { ... }` blocks: tests may reach anywhere.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand(prefix, body):
    """Expand a `use` tree `a::{b, c::{d}}` into full paths."""
    body = body.strip()
    m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", body, flags=re.S)
    if not m:
        return [prefix + [p for p in body.split("::") if p and not p.startswith("*")]]
    head = [p for p in m.group(1).split("::") if p]
    inner, parts, depth, cur = m.group(3), [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    res = []
    for p in parts:
        p = re.sub(r"\s+as\s+\w+$", "", p.strip())
        if p:
            res += expand(prefix + head, p)
    return res


def resolve(parts, here, mods):
    if not parts:
        return None
    cur = here.split("::") if here else []
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    elif parts[0] in ("super", "self"):
        base = list(cur)
        rest = list(parts)
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    elif here and "::".join(cur + [parts[0]]) in mods or not here and parts[0] in mods:
        base, rest = cur, parts  # a child module named without `self::`
    else:
        return None
    full = base + rest
    for n in range(len(full), 0, -1):
        name = "::".join(full[:n])
        if name in mods:
            return name
    return None


def edges(mods):
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip(open(path, encoding="utf-8").read())
        paths = []
        for u in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text, flags=re.S):
            paths += expand([], re.sub(r"\s+", "", u.group(1)).replace("as", " as "))
        for u in re.finditer(r"\buse\s+(\w+::[^;]*);", text, flags=re.S):
            paths += expand([], re.sub(r"\s+", "", u.group(1)).replace("as", " as "))
        for p in re.finditer(r"(?<![:\w])(\w+(?:::\w+)+)", text):
            paths.append(p.group(1).split("::"))
        for p in paths:
            target = resolve(p, m, mods)
            if target and target != m:
                graph[m].add(target)
    return graph


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    mods = modules()
    graph = edges(mods)
    if "--dot" in sys.argv:
        print("digraph tollgate {")
        for m in sorted(graph):
            for t in sorted(graph[m]):
                print(f'  "{m}" -> "{t}";')
        print("}")
        return 0
    comps = sccs(graph)  # reverse topological: dependencies first
    for comp in comps:
        for m in comp:
            deps = ", ".join(sorted(graph[m])) or "-"
            print(f"{m:28} -> {deps}")
    cycles = [c for c in comps if len(c) > 1]
    for c in cycles:
        print(f"\nCYCLE ({len(c)} modules): " + ", ".join(c), file=sys.stderr)
    if cycles:
        return 1
    print(f"\n{len(mods)} modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
