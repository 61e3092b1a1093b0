"""Execute notebooks headlessly and save them with their outputs.

    python run_notebooks.py --out DIR notebooks/*.ipynb

Each notebook runs top to bottom in a fresh kernel (the Python running this script); any cell
error stops with a non-zero exit and names the notebook and the cell. Plots are embedded as PNG.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the executed notebooks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("notebooks", nargs="+")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # Headless plots, embedded as PNG in the saved notebook.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    failed = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        started = time.monotonic()
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
        name = os.path.basename(path)
        try:
            client.execute()
            status = "ok"
        except CellExecutionError as e:
            failed += 1
            status = f"FAILED\n{e}"
        # Saved either way: a failed notebook shows where it stopped.
        nbformat.write(nb, os.path.join(args.out, name))
        print(f"{name}: {status} ({time.monotonic() - started:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
