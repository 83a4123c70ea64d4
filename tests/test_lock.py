"""requirements.lock pins the whole environment: it agrees with requirements.txt, every entry has a hash, and the
environment the tests run in is exactly the lock (where `make setup` installed it)."""
from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level(text: str) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements file."""
    pins = {}
    for line in text.splitlines():
        m = PIN.match(line.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def locked(text: str) -> dict[str, dict]:
    """name -> {version, hashes, via} of a pip-compile lock file."""
    entries, current = {}, None
    for line in text.splitlines():
        m = PIN.match(line)
        if m:
            current = entries[canonical(m.group(1))] = {"version": m.group(2), "hashes": 0, "via": []}
        elif current is not None:
            current["hashes"] += line.count("--hash=sha256:")
            via = re.match(r"\s*#\s*(?:via\s+)?(-r requirements\.txt|[a-z0-9][a-z0-9._-]*)\s*$", line, re.I)
            if via and line.strip() != "# via":
                current["via"].append(via.group(1))
    return entries


def disagreements(requirements: str, lock: str) -> list[str]:
    req, lk = top_level(requirements), locked(lock)
    out = [f"{n}=={v} in requirements.txt, {'missing' if n not in lk else lk[n]['version']} in the lock"
           for n, v in req.items() if lk.get(n, {}).get("version") != v]
    out += [f"{n} is in the lock as a requirement of requirements.txt, which no longer lists it"
            for n, e in lk.items() if e["via"] == ["-r requirements.txt"] and n not in req]
    out += [f"{n}=={e['version']} has no hash" for n, e in lk.items() if not e["hashes"]]
    return out


REQUIREMENTS = (ROOT / "requirements.txt").read_text()
LOCK = (ROOT / "requirements.lock").read_text()


def test_the_lock_agrees_with_requirements_txt():
    assert disagreements(REQUIREMENTS, LOCK) == [], "run `make lock` and commit requirements.lock"
    assert len(locked(LOCK)) > len(top_level(REQUIREMENTS)) + 50       # transitive packages are pinned too


def test_a_changed_pin_or_a_dropped_package_is_caught():
    bumped = REQUIREMENTS.replace("dvc==3.67.1", "dvc==3.68.0")
    assert disagreements(bumped, LOCK) == ["dvc==3.68.0 in requirements.txt, 3.67.1 in the lock"]
    added = REQUIREMENTS + "rich==13.0.0\n"
    assert any(d.startswith("rich==13.0.0 in requirements.txt") for d in disagreements(added, LOCK))
    dropped = REQUIREMENTS.replace("selenium==4.38.0\n", "")
    assert disagreements(dropped, LOCK) == [
        "selenium is in the lock as a requirement of requirements.txt, which no longer lists it"]
    unhashed = re.sub(r"(pyyaml==6\.0\.3)( \\\n\s+--hash=sha256:\w+)+", r"\1", LOCK, flags=re.I)
    assert "pyyaml==6.0.3 has no hash" in disagreements(REQUIREMENTS, unhashed)


def test_no_deps_pins_have_hashes():
    lines = [ln for ln in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines and all(PIN.match(ln) and "--hash=sha256:" in ln for ln in lines)
    assert not set(top_level("\n".join(lines))) & set(locked(LOCK))


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)),
                    reason="requirements.lock is compiled for Linux x86_64 CPython 3.11; make setup installs "
                           "requirements.txt elsewhere")
def test_the_environment_is_the_lock():
    """What `make setup` installed is exactly the lock: a clone tests the stack the lock names."""
    expected = {n: e["version"] for n, e in locked(LOCK).items()}
    expected.update(top_level((ROOT / "requirements-nodeps.txt").read_text()))
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {n: (v, installed.get(n)) for n, v in expected.items()
             if n not in ("setuptools", "pip") and installed.get(n) != v}
    assert wrong == {}, "the environment differs from requirements.lock (name: (locked, installed)): " \
                        "rm .venv/.installed && make setup"
