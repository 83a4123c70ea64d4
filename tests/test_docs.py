"""The docs cannot drift from the code unnoticed: links resolve, every `-S key=value` in a command is a valid
param, and a param's default is stated only in the generated reference (docs/params.md) or, when a page
states one, it is the declared one."""
import re
import shlex

import pytest

from conftest import ROOT
from dcgan import params

PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?!https?://|mailto:)([^)#\s]+)(#[^)\s]*)?\)")
SET = re.compile(r"-S\s+('[^']*'|\"[^\"]*\"|\w+=[^\s`]*)")
HYPOTHETICAL = {"extending.md"}   # shows parts a reader is about to add: keys checked, values not


def _value(text: str):
    import yaml
    return yaml.safe_load(text) if text else ""


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target, _ in LINK.findall(page.read_text()):
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dash_s_in_a_command_is_a_valid_param(page):
    for arg in SET.findall(page.read_text()):
        key, _, values = shlex.split(arg)[0].rstrip(".,;:)").partition("=")
        if key == "key":                       # the syntax itself: -S key=value
            continue
        assert key in params.SCHEMA, f"{page.relative_to(ROOT)}: -S {key}: no such param"
        if any(c in values for c in "${<'\"") or page.name in HYPOTHETICAL:
            continue   # a placeholder, a quoted grid (tests/test_params.py expands the sweep recipe), or hypothetical
        for v in values.split(",") if key != "diffaugment" else [values]:
            params.validate({**params.defaults(), key: _value(v)}, [key], page.name)


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "params.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_a_default_stated_in_prose_is_the_declared_one(page):
    text = page.read_text()
    for key, p in params.SCHEMA.items():
        for m in re.finditer(rf"`{key}`\s*\((?:default:?\s*)?`?([\w.\-]+)`?\)|`{key}`[^.\n]{{0,12}}default (?:is )?`?([\w.\-]+)`?",
                             text):
            stated = _value(m.group(1) or m.group(2))
            assert stated == p.default, (f"{page.relative_to(ROOT)} says `{key}` is {stated!r} by default; "
                                         f"dcgan/params.py declares {p.default!r}")
