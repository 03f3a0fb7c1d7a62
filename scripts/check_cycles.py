#!/usr/bin/env python3
"""Detect import cycles between modules inside each crate of the workspace.

Every .rs file under a crate's lib source dir is mapped to a module path
(src/lib.rs -> [], src/foo.rs and src/foo/mod.rs -> [foo], src/foo/bar.rs ->
[foo, bar]); src/main.rs, src/bin/**, tests/, examples/ and benches/ are not
part of the library and are skipped, as are files declared `#[cfg(test)] mod x;`.

After blanking comments, string/char literals, `pub(in ...)` and the bodies of
`#[cfg(test)] mod NAME { ... }` blocks, every path starting with `crate::`,
`super::` or `self::` (including nested `use` groups such as
`use crate::{a::{X, Y}, b::Z}`) is resolved to the longest prefix that is a
known module of the crate.  A reference from module A to module B is projected
to the sibling level: with P = longest common prefix of A and B, if both are
longer than P it gives the edge A[len(P)] -> B[len(P)] among the children of P
(references to an ancestor or descendant give no edge).

A *cycle* is a strongly connected component with more than one node in one of
these sibling graphs: e.g. `backbone -> kernels -> backbone` means some file in
backbone/ uses something in kernels and vice versa.  For each one, a concrete
cycle is printed with the file:line references that create every edge.

Usage: check_cycles.py [ROOT] [--crate NAME] | --self-test
Exit: 0 no cycles, 1 cycles found (or self-test failure), 2 usage error.
"""
import os, re, subprocess, sys, tempfile
from collections import defaultdict, deque

IDENT = re.compile(r"\$?[A-Za-z_]\w*|\*")
RAW_STR = re.compile(r'r(#*)"')
PATH_START = re.compile(r"(?<![\w:])(\$?crate|super|self)\s*::")
TEST_MOD = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]\s*(?:#\s*\[[^\]]*\]\s*)*"
                      r"(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(\w+)\s*([{;])")
INLINE_MOD = re.compile(r"(?<!\w)mod\s+(\w+)\s*\{")
PUB_IN = re.compile(r"pub\s*\(\s*in\s[^)]*\)")


def strip_code(src):
    """Replace comments, string and char literals by spaces (newlines kept)."""
    out, i, n = list(src), 0, len(src)

    def blank(a, b):
        out[a:b] = ["\n" if ch == "\n" else " " for ch in out[a:b]]

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j); i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j): depth, j = depth + 1, j + 2
                elif src.startswith("*/", j): depth, j = depth - 1, j + 2
                else: j += 1
            blank(i, j); i = j
        elif c == "r" and (i == 0 or not (src[i-1].isalnum() or src[i-1] == "_")
                           or (src[i-1] == "b" and (i < 2 or not (src[i-2].isalnum() or src[i-2] == "_")))):
            m = RAW_STR.match(src, i)
            if not m:
                i += 1; continue
            j = src.find('"' + m.group(1), m.end())
            j = n if j < 0 else j + 1 + len(m.group(1))
            blank(i, j); i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            blank(i, j + 1); i = j + 1
        elif c == "'":
            if i + 1 < n and src[i+1] == "\\":          # '\n', '\'', '\u{..}'
                j = src.find("'", i + 3)
                j = n - 1 if j < 0 else j
                blank(i, j + 1); i = j + 1
            elif i + 2 < n and src[i+2] == "'":         # 'x'
                blank(i, i + 3); i += 3
            else:                                       # lifetime 'a
                i += 1
        else:
            i += 1
    return "".join(out)


def match_brace(code, i):
    """Index just past the '}' matching the '{' at code[i] (code is stripped)."""
    depth = 0
    for j in range(i, len(code)):
        if code[j] == "{": depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0: return j + 1
    return len(code)


def parse_path(code, i):
    """Parse a path (with nested `{}` groups) at i; return (list of segment lists, end)."""
    ws = lambda k: re.compile(r"\s*").match(code, k).end()
    segs, paths = [], []
    while True:
        i = ws(i)
        if i < len(code) and code[i] == "{":
            i += 1
            while True:
                i = ws(i)
                if i >= len(code) or code[i] == "}": return paths or [segs], i + 1
                sub, i = parse_path(code, i)
                paths += [segs + [s for s in p if s not in ("self", "*")] for p in sub]
                while i < len(code) and code[i] not in ",}": i += 1   # skip `as X`
                if i < len(code) and code[i] == ",": i += 1
        m = IDENT.match(code, i)
        if not m: return [segs], i
        segs.append(m.group().lstrip("$")); i = ws(m.end())
        if not code.startswith("::", i): return [segs], i
        i += 2


def file_modules(crate_dir):
    """Return (crate name, {module path tuple: file path}) for the crate's lib."""
    toml_path = os.path.join(crate_dir, "Cargo.toml")
    toml = open(toml_path, encoding="utf-8").read() if os.path.isfile(toml_path) else ""
    m = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', toml, re.M | re.S)
    name = m.group(1) if m else os.path.basename(crate_dir)
    m = re.search(r'^\[lib\][^\[]*?^path\s*=\s*"([^"]+)"', toml, re.M | re.S)
    root = os.path.normpath(os.path.join(crate_dir, m.group(1) if m else "src/lib.rs"))
    src, mods = os.path.dirname(root), {}
    if not os.path.isfile(root): return name, src, mods
    mods[()] = root
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        parts = [] if rel == "." else rel.split(os.sep)
        if parts[:1] == ["bin"]: dirs[:] = []; continue
        for f in files:
            p = os.path.join(d, f)
            if not f.endswith(".rs") or p == root or (not parts and f == "main.rs"): continue
            mods[tuple(parts if f == "mod.rs" else parts + [f[:-3]])] = p
    return name, src, mods


def scan_crate(crate_dir):
    """Return (name, modules, edges) with edges {(P, u, v): [(file, line, ref)]}."""
    name, src, mods = file_modules(crate_dir)
    codes, test_only = {}, set()
    for mod, path in mods.items():
        code = PUB_IN.sub(lambda m: " " * len(m.group()), strip_code(open(path, encoding="utf-8").read()))
        for m in TEST_MOD.finditer(code):
            if m.group(2) == ";": test_only.add(mod + (m.group(1),)); continue
            a, b = m.start(), match_brace(code, m.end() - 1)
            code = code[:a] + re.sub(r"[^\n]", " ", code[a:b]) + code[b:]
        codes[mod] = code
    mods = {m: p for m, p in mods.items() if not any(m[:len(t)] == t for t in test_only)}
    edges = defaultdict(list)
    for A, path in mods.items():
        code = codes[A]
        inline = [(m.group(1), m.start(), match_brace(code, m.end() - 1)) for m in INLINE_MOD.finditer(code)]
        for m in PATH_START.finditer(code):
            ctx = A + tuple(nm for nm, a, b in inline if a < m.start() < b)
            for segs in parse_path(code, m.start())[0]:
                ref, base = "::".join(segs), list(ctx)
                while segs and segs[0] in ("crate", "super", "self"):
                    head = segs.pop(0)
                    if head == "crate": base = []
                    elif head == "super":
                        if not base: base = None; break
                        base.pop()
                if base is None: continue
                full = tuple(base + segs)
                B = next(full[:k] for k in range(len(full), -1, -1) if full[:k] in mods)
                k = 0
                while k < min(len(A), len(B)) and A[k] == B[k]: k += 1
                if len(A) > k and len(B) > k:
                    line = code.count("\n", 0, m.start()) + 1
                    edges[(A[:k], A[k], B[k])].append((os.path.relpath(path, src), line, ref))
    return name, mods, edges


def sccs(nodes, adj):
    """Tarjan's algorithm; returns list of SCCs (lists of nodes)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in sorted(adj[v]):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(sorted(comp))
    for v in sorted(nodes):
        if v not in index: visit(v)
    return out


def shortest_cycle(start, comp, adj):
    """BFS within comp for the shortest cycle through start."""
    prev, q = {start: None}, deque([start])
    while q:
        v = q.popleft()
        for w in sorted(adj[v]):
            if w == start:
                cyc = [v]
                while prev[cyc[-1]] is not None: cyc.append(prev[cyc[-1]])
                return cyc[::-1] + [start]
            if w in comp and w not in prev: prev[w] = v; q.append(w)
    return [start]


def check(root, only=None):
    crates = sorted(d for d in (os.path.join(root, "crates", c) for c in os.listdir(os.path.join(root, "crates")))
                    if os.path.isfile(os.path.join(d, "Cargo.toml")) or os.path.isdir(os.path.join(d, "src")))
    found, seen = 0, False
    for d in crates:
        name, mods, edges = scan_crate(d)
        if only and name != only and os.path.basename(d) != only: continue
        seen, levels, ncyc = True, defaultdict(lambda: defaultdict(set)), 0
        for (P, u, v) in edges: levels[P][u].add(v); levels[P][v]
        for P, adj in sorted(levels.items()):
            fq = lambda x: "::".join(P + (x,))
            for comp in (c for c in sccs(adj, adj) if len(c) > 1):
                ncyc += 1
                cyc = shortest_cycle(comp[0], set(comp), adj)
                print(f"{name}: {' -> '.join(fq(x) for x in cyc)}")
                print(f"  component ({len(comp)} modules): {', '.join(fq(x) for x in comp)}")
                if len(comp) > 2:  # every edge inside the component, with its number of references
                    inner = sorted((u, v) for (Q, u, v) in edges if Q == P and u in comp and v in comp)
                    print("  edges inside: " + ", ".join(f"{u}->{v} ({len(edges[(P, u, v)])})" for u, v in inner))
                for u, v in zip(cyc, cyc[1:]):
                    ev = edges[(P, u, v)]
                    locs = "; ".join(f"{f}:{ln} {r}" for f, ln, r in ev[:4])
                    more = f"; +{len(ev) - 4} more" if len(ev) > 4 else ""
                    print(f"    {fq(u)} -> {fq(v)}  ({locs}{more})")
        found += ncyc
        note = "" if os.path.isfile(os.path.join(d, "Cargo.toml")) else " (no Cargo.toml: named after its dir)"
        print(f"{name}: {len(mods)} modules, {len(edges)} sibling edges, {ncyc or 'no'} cycle(s){note}")
    if only and not seen:
        return print(f"usage error: no crate named {only!r}", file=sys.stderr) or 2
    return 1 if found else 0


def self_test():
    fails = []
    ok = lambda cond, msg: cond or fails.append(msg)
    def make(root, files):
        for rel, text in files.items():
            p = os.path.join(root, "crates", "planted", rel)
            os.makedirs(os.path.dirname(p), exist_ok=True); open(p, "w").write(text)
    common = {"Cargo.toml": '[package]\nname = "planted"\nversion = "0.1.0"\n',
              "src/b.rs": "pub struct B; use crate::c::C;\n", "src/main.rs": "use planted::a;\n"}
    with tempfile.TemporaryDirectory() as tmp:
        cyc, acyc = os.path.join(tmp, "cyc"), os.path.join(tmp, "acyc")
        make(cyc, {**common, "src/lib.rs": "pub mod a; pub mod b; pub mod c;\n", "src/a.rs": "use crate::b::B;\n",
                   "src/c.rs": "pub struct C; fn f() { crate::a::g() }\n"})
        make(acyc, {**common, "src/lib.rs": "pub mod a; pub mod b; pub mod c; pub mod d; pub mod n;\n",
                    "src/a.rs": "use crate::{b::{B}, c};\npub fn g() {}\n",
                    "src/c.rs": "pub struct C;\n// crate::a::g()\n/* crate::a::g() /* nested */ crate::a */\n"
                                "fn f<'a>(x: &'a str) -> char { let _ = \"crate::a::g \\\" }\"; "
                                "let _ = r#\"crate::a::g\"}\"#; '}' }\n"
                                "#[cfg(test)]\nmod tests {\n    use crate::a::g;\n    fn t() { let _ = '{'; super::super::a::g(); }\n}\n"
                                "fn h() -> crate::d::D { crate::d::D }\n", "src/d.rs": "pub struct D;\n",
                    "src/n/mod.rs": "pub mod m; pub mod k;\nuse self::k::K;\n", "src/n/k.rs": "pub struct K;\n",
                    "src/n/m.rs": "use super::k::K;\nuse super::super::c::C;\n"})
        run = lambda r: subprocess.run([sys.executable, os.path.abspath(__file__), r], capture_output=True, text=True)
        res = run(cyc)
        ok(res.returncode == 1, f"cyclic crate: expected exit 1, got {res.returncode}\n{res.stdout}{res.stderr}")
        ok("planted: a -> b -> c -> a" in res.stdout, f"cycle a -> b -> c -> a not printed:\n{res.stdout}")
        ok("c.rs:1 crate::a::g" in res.stdout, f"edge location c.rs:1 not printed:\n{res.stdout}")
        res = run(acyc)
        ok(res.returncode == 0, f"acyclic crate: expected exit 0, got {res.returncode}\n{res.stdout}{res.stderr}")
        _, mods, e = scan_crate(os.path.join(acyc, "crates", "planted"))
        ok(((), "c", "a") not in e, f"comment/string/cfg(test) reference created edge c -> a: {e.get(((), 'c', 'a'))}")
        ok(((), "c", "d") in e and e[((), "c", "d")][0][1] == 10, f"c -> d (line 10) after literals missing: {e}")
        ok(((), "a", "b") in e and ((), "a", "c") in e, f"use crate::{{b::{{B}}, c}} group not resolved: {sorted(e)}")
        ok((("n",), "m", "k") in e, f"use super::k from n::m not resolved to n: m -> k: {sorted(e)}")
        ok(((), "n", "c") in e, f"use super::super::c from n::m not resolved to n -> c: {sorted(e)}")
        ok(("n", "m") in mods and () in mods and ("main",) not in mods, f"module map wrong: {sorted(mods)}")
        ok(len(parse_path("crate::{x::{Y, Z as W}, z, self}", 0)[0]) == 4, "nested group expansion wrong")
    for f in fails: print("FAIL:", f)
    print("self-test:", "FAILED" if fails else "all assertions passed")
    return 1 if fails else 0


def main(argv):
    args, only, root = list(argv), None, None
    if "--self-test" in args: return self_test() if args == ["--self-test"] else 2
    while args:
        a = args.pop(0)
        if a == "--crate" and args: only = args.pop(0)
        elif a in ("-h", "--help"): print(__doc__); return 0
        elif not a.startswith("-") and root is None: root = a
        else: print(f"usage error: {a!r}\n" + __doc__.splitlines()[-2], file=sys.stderr); return 2
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, "crates")): return check(root, only)
    print(f"usage error: {root}/crates not found", file=sys.stderr); return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
