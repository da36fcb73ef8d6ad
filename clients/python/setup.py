"""Puts the server's Lua scripts into the package when it is built: from the
repository's lua/ (this directory is clients/python of that repository), so
an installed package runs the very scripts the server runs and no copy is
kept in git. tests/test_scripts.py checks the installed copy against lua/."""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
REPO_LUA = HERE.parents[1] / "lua"


class BuildWithScripts(build_py):
    def run(self):
        super().run()
        target = pathlib.Path(self.build_lib) / "agentbus" / "lua"
        if REPO_LUA.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(REPO_LUA, target)
        elif not target.is_dir():
            raise SystemExit(f"no Lua scripts: {REPO_LUA} is missing")


setup(cmdclass={"build_py": BuildWithScripts})
