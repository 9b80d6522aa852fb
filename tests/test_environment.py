"""environment.yml mirrors pyproject.toml; every direct dependency is pinned."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(deps)
    assert "python=3.11" in env["dependencies"]


def test_direct_dependencies_pinned_and_locked():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, _, version = dep.partition("==")
        name = name.split("[")[0]  # extras (ray[tune]) pin the package itself
        assert version, f"{dep} is not pinned"
        assert lock.get(name.lower()) == version, f"{dep} disagrees with requirements.lock ({lock.get(name.lower())})"
