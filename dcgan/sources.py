"""Which files of this project a script runs, derived from its import statements (transitively).

Two users: the train stage's checkpoint fingerprint (the code that produced a checkpoint) and the test
that checks every stage's `deps` in dvc.yaml, so that a new module can never be forgotten there.
Imports anywhere in a file count (also inside functions): a lazily imported module still runs. A folder of
registered parts whose `__init__.py` calls `import_modules(__name__)` (see registry.py) runs every module in
it, so each of them counts as imported by that `__init__.py`.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]   # the repository root, which holds the package
PACKAGE = Path(__file__).resolve().parent.name


def _module_file(dotted: str) -> Path | None:
    """dcgan.x.y -> ROOT/dcgan/x/y.py or ROOT/dcgan/x/y/__init__.py; None outside the project."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _package_of(path: Path) -> list[str]:
    """Dotted package that a project file belongs to (for resolving relative imports)."""
    parts = list(path.resolve().relative_to(ROOT).with_suffix("").parts)
    return parts[:-1]  # dcgan/x.py -> dcgan; dcgan/__init__.py -> dcgan (its last part is '__init__')


def _imported_modules(path: Path, discovered: bool = True) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_modules" \
                and path.name == "__init__.py" and discovered:
            pkg = ".".join(_package_of(path))
            names.update(f"{pkg}.{m.stem}" for m in path.parent.glob("*.py") if not m.name.startswith("_"))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = _package_of(path)
                base = pkg[:len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                base = (node.module or "").split(".")
            names.add(".".join(base))
            names.update(".".join(base + [a.name]) for a in node.names)  # `from pkg import module`
    return names


def direct_imports(path: Path, discovered: bool = True) -> set[Path]:
    """Project files that importing/running `path` executes directly, parent packages' __init__.py included.
    discovered=False: leave out the modules a folder of parts imports by import_modules."""
    out = set()
    for dotted in _imported_modules(path, discovered):
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):          # importing a.b.c runs a/__init__.py and a/b/__init__.py
            f = _module_file(".".join(parts[:i]))
            if f is not None:
                out.add(f.resolve())
    return out


@lru_cache(maxsize=None)
def project_files(entry: Path, exclude: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """`entry` and every project file it imports, directly or through other project files; sorted.
    exclude: folders (relative to the root) not entered, nor what is reached only through them."""
    skipped = tuple(ROOT / d for d in exclude)
    seen, todo = set(), [Path(entry).resolve()]
    while todo:
        f = todo.pop()
        if f in seen or any(f.is_relative_to(d) for d in skipped):
            continue
        seen.add(f)
        todo.extend(direct_imports(f) - seen)
    return tuple(sorted(seen))


def relative(path: Path) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def digests(files) -> dict[str, str]:
    """{'dcgan/model.py': sha256 of its bytes, ...}"""
    return {relative(f): hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}
