"""Copies the repository's lua/ into the package (agentbus/lua/), so an
installed package carries the very scripts the server runs.
tests/test_scripts.py fails while the two differ: run this, then commit."""

import pathlib
import shutil

here = pathlib.Path(__file__).resolve().parent
source, target = here.parents[1] / "lua", here / "agentbus" / "lua"
shutil.rmtree(target, ignore_errors=True)
shutil.copytree(source, target)
print(f"copied {source} -> {target}")
