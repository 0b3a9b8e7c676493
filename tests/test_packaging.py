"""pyproject.toml and environment.yml must name the same dependencies with the same lower bounds."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$")


def _parse(requirement: str) -> tuple[str, str]:
    name, bound = _REQUIREMENT.match(requirement).groups()
    return name.lower().replace("_", "-"), bound.replace(" ", "")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return dict(_parse(r) for r in requirements)


def _environment() -> dict[str, str]:
    entries = re.findall(r"^\s*-\s*(\S+)\s*$", (ROOT / "environment.yml").read_text(), re.MULTILINE)
    parsed = dict(_parse(e) for e in entries if not e.endswith(":") and e not in ("conda-forge", "defaults"))
    parsed.pop("python", None)
    parsed.pop("pip", None)
    return parsed


def test_environment_yml_matches_pyproject():
    assert _environment() == _pyproject()
