"""Execute a notebook headless with nbclient; fail on any cell error.

    python3 scripts/run_notebook.py notebooks/review.ipynb [OUT.ipynb]
"""
import sys

import nbformat
from nbclient import NotebookClient

path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
if len(sys.argv) > 2:
    nbformat.write(nb, sys.argv[2])
outputs = sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
print(f"executed {path}: {len(nb.cells)} cells, {outputs} outputs")
