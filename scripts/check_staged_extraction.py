#!/usr/bin/env python3
"""Check a sharded extraction against a single-process one, with pylance.

    check_staged_extraction.py SINGLE_STORE SHARDED_STORE VERSION_BEFORE

Both stores hold the same rows. The sharded store must have the same feature column as the
single-process one, value for value by id; its column must have appeared in one commit
(VERSION_BEFORE + 1 holds every value, VERSION_BEFORE none), followed only by the commit of the
cache key (table metadata). Store URIs may be s3://..., read with the AWS_* variables.
"""
import sys

import lance
import numpy as np

single, sharded, before = sys.argv[1], sys.argv[2], int(sys.argv[3])


def feature_column(ds):
    cols = [f.name for f in ds.schema if f.name.startswith("feat_")]
    assert len(cols) == 1, f"{ds.uri}: feature columns {cols}"
    return cols[0]


a = lance.dataset(single)
b = lance.dataset(sharded)
col = feature_column(a)
assert feature_column(b) == col, f"column {feature_column(b)} vs {col}"
ta = {r["id"]: r[col] for r in a.to_table(columns=["id", col]).to_pylist()}
tb = {r["id"]: r[col] for r in b.to_table(columns=["id", col]).to_pylist()}
assert ta.keys() == tb.keys(), f"ids differ: {len(ta)} vs {len(tb)}"
assert all(v is not None for v in tb.values()), "the sharded column has nulls"
diff = max(float(np.max(np.abs(np.array(ta[k], dtype=np.float32) - np.array(tb[k], dtype=np.float32)))) for k in ta)
assert diff == 0.0, f"sharded features differ from the single-process ones by up to {diff}"

# One commit: the version before has no column, the next has all of it, then only the metadata.
assert b.version == before + 2, f"{sharded}: version {b.version}, expected {before} + 2 (data, then the cache key)"
prev = lance.dataset(sharded, version=before)
assert col not in [f.name for f in prev.schema], f"version {before} already has {col}"
data = lance.dataset(sharded, version=before + 1)
n = data.count_rows(filter=f"{col} IS NOT NULL")
assert n == data.count_rows(), f"version {before + 1} has {n} of {data.count_rows()} values"
print(f"   {sharded}: column {col} equals {single}'s for all {len(tb)} rows, committed in version {before + 1}")
