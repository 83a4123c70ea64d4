"""sources.py derives the project files a script runs from its imports (dvc.yaml's deps and the checkpoint
fingerprint come from it); no import cycle anywhere in the package."""
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dcgan import sources
from dcgan.declared import stage_script as _script

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
TOOLS = ("stages/report.py", "dcgan/generate.py", "dcgan/declared.py", "dcgan/serve/__main__.py",
         "dcgan/serve/container.py")


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
    for tool in TOOLS:
        used |= {sources.relative(f) for f in sources.project_files(ROOT / tool)}
    package = {sources.relative(f) for f in (ROOT / "dcgan").rglob("*.py")}
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


def test_a_folder_of_registered_parts_counts_every_module_as_imported(tmp_path, monkeypatch):
    root = _package(tmp_path, {
        "dcgan/__init__.py": "",
        "dcgan/registry.py": "def import_modules(name): ...\n",
        "dcgan/parts/__init__.py": "from ..registry import import_modules\nimport_modules(__name__)\n",
        "dcgan/parts/one.py": "",
        "dcgan/parts/two.py": "",
        "dcgan/parts/_private.py": "",
        "stages/s.py": "from dcgan import parts\n",
    })
    monkeypatch.setattr(sources, "ROOT", root)
    got = {sources.relative(f) for f in sources.project_files.__wrapped__(root / "stages/s.py")}
    assert got == {"stages/s.py", "dcgan/__init__.py", "dcgan/registry.py", "dcgan/parts/__init__.py",
                   "dcgan/parts/one.py", "dcgan/parts/two.py"}


def test_no_import_cycle_in_the_package():
    """Imports between the package's modules, lazy ones included, form no cycle (checkpoint.py and training.py
    used to import each other). A folder of parts importing its own modules (registry.import_modules) is not
    an import of them: the parts import the folder's __init__ for its registry, which exists by then."""
    files = sorted((ROOT / "dcgan").rglob("*.py"))
    graph = {f.resolve(): sources.direct_imports(f, discovered=False) - {f.resolve()} for f in files}
    done, path = set(), []

    def visit(node):
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError("import cycle: " + " -> ".join(sources.relative(p) for p in cycle))
        if node in done:
            return
        path.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        path.pop()
        done.add(node)

    for f in graph:
        visit(f)
