"""requirements.txt (the pip path) and uv.lock (the uv path) install the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            name = re.sub(r"\[.*\]", "", name)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    specs = list(project["project"]["dependencies"])
    for group in project.get("dependency-groups", {}).values():
        specs += group
    return {
        re.split(r"[\[=<>~! ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        for spec in specs
    }


def test_requirements_pin_what_the_lock_resolves():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    for name, version in _requirements().items():
        assert locked.get(name) == version, (
            f"requirements.txt pins {name}=={version}, uv.lock has {locked.get(name)}"
        )


def test_requirements_list_every_declared_dependency():
    assert _declared() <= set(_requirements()), (
        "pyproject.toml declares packages requirements.txt does not pin: "
        f"{sorted(_declared() - set(_requirements()))}"
    )


def test_python_is_capped_below_3_13_where_bytewax_has_no_wheels():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11,<3.13"
