"""Registries: a folder of parts registers every module in it, so adding a part is adding a file."""
import importlib
import sys

import pytest

from dcgan.registry import Registry


def test_a_new_module_in_the_folder_is_registered_without_touching_anything_else(tmp_path, monkeypatch):
    pkg = tmp_path / "parts_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from dcgan.registry import Registry, import_modules\n"
                                     "REGISTRY = Registry('part')\nimport_modules(__name__)\n")
    (pkg / "alpha.py").write_text("from . import REGISTRY\nREGISTRY.register('alpha')(lambda: 'a')\n")
    (pkg / "_helper.py").write_text("raise RuntimeError('underscore modules are not parts')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.import_module("parts_demo").REGISTRY.names() == ("alpha",)

    (pkg / "beta.py").write_text("from . import REGISTRY\nREGISTRY.register('beta')(lambda: 'b')\n")  # one new file
    for name in [m for m in sys.modules if m.startswith("parts_demo")]:
        del sys.modules[name]
    registry = importlib.import_module("parts_demo").REGISTRY
    assert registry.names() == ("alpha", "beta") and registry.get("beta")() == "b"
    for name in [m for m in sys.modules if m.startswith("parts_demo")]:
        del sys.modules[name]


def test_unknown_name_lists_the_choices_and_a_name_is_taken_once():
    reg = Registry("widget")
    reg.register("a")(int)
    reg.register("a")(int)               # the same part again (a module imported twice): fine
    with pytest.raises(ValueError, match="two widgets registered as 'a'"):
        reg.register("a")(float)
    with pytest.raises(ValueError, match=r"unknown widget 'b' \(choose from a\)"):
        reg.get("b")
    assert "a" in reg and list(reg) == ["a"]
