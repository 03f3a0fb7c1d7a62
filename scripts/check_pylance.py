"""Check that Python's `pylance` reads an sv-data store with the same rows and columns.

    python3 scripts/check_pylance.py STORE STATS_JSON

STATS_JSON is the output of `sv-data stats STORE --json`. Exits non-zero on any mismatch.
"""
import hashlib
import json
import sys

import lance

store, stats_path = sys.argv[1], sys.argv[2]
stats = json.load(open(stats_path))
ds = lance.dataset(store)
assert ds.version == stats["version"], f"version: pylance {ds.version}, sv-data {stats['version']}"
cols = [f.name for f in ds.schema]
assert cols == stats["columns"], f"columns: pylance {cols}, sv-data {stats['columns']}"
table = ds.to_table(columns=["id", "image", "label", "sha256", "split"]).to_pylist()
assert len(table) == stats["total"], f"rows: pylance {len(table)}, sv-data {stats['total']}"
labels = {"None": 0, "Roadwork": 0}
for row in table:
    assert hashlib.sha256(row["image"]).hexdigest() == row["sha256"], f"image bytes of {row['id']} changed"
    assert row["id"] == row["sha256"][:16]
    labels["Roadwork" if row["label"] == 1 else "None"] += 1
assert labels == {k: stats["by_label"].get(k, 0) for k in labels}, f"labels: {labels} vs {stats['by_label']}"
splits = {}
for row in table:
    splits[row["split"]] = splits.get(row["split"], 0) + 1
assert splits == stats["by_split"], f"splits: {splits} vs {stats['by_split']}"
print(f"pylance {lance.__version__} reads {store}: {len(table)} rows, {len(cols)} columns, version {ds.version}: OK")
