"""sources.py derives the project files a script runs from its imports; dvc.yaml must list them all as deps."""
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dcgan import sources

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _script(cmd: str) -> Path:
    m = re.search(r"\bpython\s+(stages/\S+\.py)", cmd)
    assert m, f"no `python stages/....py` in {cmd!r}"
    return ROOT / m.group(1)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_project_file_the_script_imports(stage):
    spec = STAGES[stage]
    needed = {sources.relative(f) for f in sources.project_files(_script(spec["cmd"]))}
    listed = set(spec.get("deps", []))
    missing = sorted(needed - listed)
    assert not missing, f"dvc.yaml stage '{stage}' misses deps {missing}: a change there would leave outputs stale"
    stale = sorted(d for d in listed if d.endswith(".py") and d not in needed)
    assert not stale, f"dvc.yaml stage '{stage}' lists {stale}, which its script never imports"


def test_every_module_of_the_package_is_run_by_some_stage_or_tool():
    used = set()
    for spec in STAGES.values():
        used |= {sources.relative(f) for f in sources.project_files(_script(spec["cmd"]))}
    for tool in ("stages/report.py", "dcgan/storage.py"):
        used |= {sources.relative(f) for f in sources.project_files(ROOT / tool)}
    package = {sources.relative(f) for f in (ROOT / "dcgan").glob("*.py")}
    assert package - used == set(), "modules nothing runs (dead code or a missing dvc.yaml dep)"


def _package(tmp_path, files: dict) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_imports_are_followed_through_relative_lazy_and_from_package_forms(tmp_path, monkeypatch):
    root = _package(tmp_path, {
        "dcgan/__init__.py": "",
        "dcgan/a.py": "from . import b\nfrom .c import thing\n",
        "dcgan/b.py": "def f():\n    from .d import g  # lazy: still runs\n",
        "dcgan/c.py": "thing = 1\nimport numpy\n",
        "dcgan/d.py": "import dcgan.e\n",
        "dcgan/e.py": "",
        "dcgan/unused.py": "",
        "dcgan/sub/__init__.py": "",
        "dcgan/sub/x.py": "from .. import e\n",
        "stages/s.py": "import sys\nfrom dcgan import a\nfrom dcgan.sub import x\n",
    })
    monkeypatch.setattr(sources, "ROOT", root)
    got = {sources.relative(f) for f in sources.project_files.__wrapped__(root / "stages/s.py")}
    assert got == {"stages/s.py", "dcgan/__init__.py", "dcgan/a.py", "dcgan/b.py", "dcgan/c.py", "dcgan/d.py",
                   "dcgan/e.py", "dcgan/sub/__init__.py", "dcgan/sub/x.py"}


def test_digests_change_with_the_bytes(tmp_path, monkeypatch):
    root = _package(tmp_path, {"dcgan/__init__.py": "", "dcgan/m.py": "x = 1\n"})
    monkeypatch.setattr(sources, "ROOT", root)
    before = sources.digests([root / "dcgan/m.py"])
    (root / "dcgan/m.py").write_text("x = 2\n")
    after = sources.digests([root / "dcgan/m.py"])
    assert set(before) == {"dcgan/m.py"} and before != after
