#!/usr/bin/env python3
"""Delete stale build outputs of the workspace's own crates from a shared cargo target directory.

CI keeps its target directory between runs so that dependencies are compiled once. Every change to
a workspace crate leaves a new test binary (about 0.5 GB each with the data stack linked in) next to
the old ones, and cargo never removes them: after a few dozen runs the disk fills. This keeps, for
each artifact name, the outputs written within `--window` hours of the newest one (one build's
worth, whatever its features) and deletes older ones. Dependencies' artifacts are left alone, and
incremental caches are deleted (CI builds with CARGO_INCREMENTAL=0). Cargo rebuilds anything whose
output is missing, so the worst this can do is cost a rebuild.

Usage: prune_target.py TARGET_DIR [--window HOURS] [--dry-run]
"""

import argparse
import collections
import os
import re
import shutil
import sys

ARTIFACT = re.compile(r"^(?P<name>.+)-(?P<hash>[0-9a-f]{16})(?P<ext>\..+)?$")


def workspace_prefixes(root):
    names = set()
    crates = os.path.join(root, "crates")
    for d in sorted(os.listdir(crates)) if os.path.isdir(crates) else []:
        names.add(d.replace("-", "_"))
    return names


def prune(target, window_h, dry_run, own):
    freed = 0
    for profile in ("debug", "release"):
        inc = os.path.join(target, profile, "incremental")
        if os.path.isdir(inc):
            freed += tree_size(inc)
            if not dry_run:
                shutil.rmtree(inc, ignore_errors=True)
        deps = os.path.join(target, profile, "deps")
        if not os.path.isdir(deps):
            continue
        groups = collections.defaultdict(list)
        for f in os.listdir(deps):
            m = ARTIFACT.match(f)
            if not m:
                continue
            name, ext = m.group("name"), m.group("ext") or ""
            base = name[3:] if name.startswith("lib") and ext in (".rlib", ".rmeta", ".so") else name
            # Executables (no extension) are test binaries and bins: always ours. Libraries only
            # when they belong to a workspace crate.
            if ext and base not in own and base != "workspace_hack":
                continue
            path = os.path.join(deps, f)
            try:
                groups[(name, ext)].append((os.stat(path).st_mtime, path))
            except FileNotFoundError:
                continue
        for files in groups.values():
            newest = max(t for t, _ in files)
            for t, path in files:
                if newest - t > window_h * 3600:
                    try:
                        freed += os.stat(path).st_size
                        if not dry_run:
                            os.remove(path)
                    except FileNotFoundError:
                        pass
    return freed


def tree_size(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target")
    p.add_argument("--window", type=float, default=3.0, help="hours; default 3")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    if not os.path.isdir(a.target):
        print(f"prune_target: {a.target} is not a directory; nothing to prune")
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    freed = prune(a.target, a.window, a.dry_run, workspace_prefixes(root))
    verb = "would free" if a.dry_run else "freed"
    st = shutil.disk_usage(a.target)
    print(f"prune_target: {verb} {freed / 1e9:.1f} GB in {a.target}; {st.free / 1e9:.1f} GB free on its disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
