"""The files written from the project's declarations, so that each fact lives in one place:

- params.yaml: every declared param (dcgan/params.py) in the declared order and sections, its help as the
  comment; the values are the ones in the file (yours: `dvc exp run -S`, your edits), declared defaults for
  keys it lacks;
- docs/params.md: the parameter reference;
- dvc.yaml: each stage's `params:` (params.STAGE_KEYS) and the project files among its `deps:` (what its
  script imports, dcgan/sources.py); everything else in dvc.yaml is written by hand and kept as it is.

`python -m dcgan.declared --write` rewrites them; `python -m dcgan.declared --check` (and
tests/test_declared.py) fails naming each file that differs. dvc.yaml is edited with ruamel.yaml, the
round-trip YAML library DVC itself uses, so its comments and layout survive.
"""
from __future__ import annotations

import argparse
import importlib
import io
import re
import sys
from pathlib import Path

import yaml

from . import sources
from .params import _SECTIONS, SCHEMA, STAGE_KEYS, Param, _kind_name

ROOT = sources.ROOT
PARAMS_YAML, REFERENCE, DVC_YAML = Path("params.yaml"), Path("docs/params.md"), Path("dvc.yaml")
STAGE_SCRIPT = re.compile(r"\bpython\s+-m\s+(stages\.\w+)")


def _yaml_value(v) -> str:
    return '""' if v == "" else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def current_values() -> dict:
    """The values in params.yaml for the declared keys it holds ({} when it is missing or unreadable)."""
    try:
        data = yaml.safe_load((ROOT / PARAMS_YAML).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return {k: v for k, v in data.items() if k in SCHEMA} if isinstance(data, dict) else {}


def params_yaml(values: dict | None = None) -> str:
    """params.yaml as the declaration gives it, with `values` (default: the declared defaults)."""
    values = {**{k: p.default for k, p in SCHEMA.items()}, **(values or {})}
    lines = ["# Every param of the pipeline, one flat level so `dvc exp run -S key=value` works as typed.",
             "# Written by `python -m dcgan.declared --write` from dcgan/params.py: change a default or a help there.",
             "# Each stage validates the keys it reads and names the key when a value is not allowed;",
             "# docs/params.md lists them all with their allowed values and the stages that read them."]
    for section, rows in _SECTIONS:
        lines += ["", f"# --- {section} ---"]
        for row in rows:
            p = SCHEMA[row[0]]
            # at least one space before '#': YAML reads a '#' right after a value as part of it
            lines.append(f"{p.name}: {_yaml_value(values[p.name])} ".ljust(27) + f"# {p.help}")
    return "\n".join(lines) + "\n"


def _allowed(p: Param) -> str:
    if p.check is None:
        return "any " + _kind_name(p.kind)
    family = getattr(p.check, "registry", None)
    if family:
        names = importlib.import_module(f"dcgan.{family}").REGISTRY.names()
        return "registered in `dcgan/{}/`: {}".format(family, ", ".join(f"`{n}`" for n in names))
    return p.check.allowed


def reference() -> str:
    """docs/params.md."""
    out = ["# Parameter reference", "",
           "Written from `dcgan/params.py` by `python -m dcgan.declared --write`; a test fails when it differs.",
           "Set a param for one experiment with `dvc exp run -S key=value`, or edit `params.yaml`.",
           "*Retrains*: a change makes the train stage start fresh instead of resuming its checkpoint "
           "(prepare's params reach training through the data).", ""]
    for section, rows in _SECTIONS:
        out += [f"## {section}", "", "| param | default | allowed | stages | retrains | what it is |",
                "|---|---|---|---|---|---|"]
        for row in rows:
            p = SCHEMA[row[0]]
            out.append(f"| `{p.name}` | `{_yaml_value(p.default)}` | {_allowed(p)} | {', '.join(p.stages)} | "
                       f"{'yes' if p.changes_weights else 'no'} | {p.help.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


def stage_script(cmd: str) -> Path:
    m = STAGE_SCRIPT.search(cmd)
    if not m:
        raise ValueError(f"no `python -m stages.<name>` in {cmd!r}")
    return sources.ROOT / (m.group(1).replace(".", "/") + ".py")


def stage_code(cmd: str) -> list[str]:
    """The project files a stage runs: its script first, then every package file it imports."""
    script = stage_script(cmd)
    files = [sources.relative(f) for f in sources.project_files(script)]
    first = sources.relative(script)
    return [first] + [f for f in files if f != first]


def dvc_yaml(text: str) -> str:
    """dvc.yaml with each stage's `params:` and the project files of its `deps:` as declared."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.width, rt.preserve_quotes = 4096, True
    rt.indent(mapping=2, sequence=4, offset=2)
    doc = rt.load(text)
    for name, stage in doc["stages"].items():
        code = stage_code(stage["cmd"])
        others = [d for d in stage.get("deps", []) if not str(d).endswith(".py")]
        stage["deps"][:] = code + others
        if name in STAGE_KEYS and STAGE_KEYS[name]:
            if "params" in stage:
                stage["params"][:] = STAGE_KEYS[name]
            else:
                stage.insert(list(stage).index("deps") + 1, "params", STAGE_KEYS[name])
        elif name in STAGE_KEYS and "params" in stage:   # the stage reads no param (any more)
            del stage["params"]
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def expected() -> dict[Path, str]:
    """Each derived file and the text it should have."""
    return {PARAMS_YAML: params_yaml(current_values()), REFERENCE: reference(),
            DVC_YAML: dvc_yaml((ROOT / DVC_YAML).read_text(encoding="utf-8"))}


def params_yaml_layout(text: str) -> list[tuple[str, str]]:
    """(key, comment) of each `key: value  # comment` line: what the declaration fixes in params.yaml, whatever
    the values and the spacing (DVC's `-S` rewrites values in place)."""
    out = []
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key.isidentifier():
            out.append((key, rest.partition("#")[2].strip()))
    return out


def differs(path: Path, text: str) -> bool:
    if not (ROOT / path).is_file():
        return True
    current = (ROOT / path).read_text(encoding="utf-8")
    if path == PARAMS_YAML:
        return params_yaml_layout(current) != params_yaml_layout(text)
    return current != text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="rewrite the files that differ")
    group.add_argument("--check", action="store_true", help="exit 1 naming each file that differs")
    args = ap.parse_args(argv)
    stale = {path: text for path, text in expected().items() if differs(path, text)}
    if args.check:
        for path in stale:
            print(f"{path} differs from the declarations: run `python -m dcgan.declared --write`", file=sys.stderr)
        return 1 if stale else 0
    from .files import atomic_write_text
    for path, text in stale.items():
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ROOT / path, text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
