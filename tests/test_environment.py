import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {package_name(r) for r in project["dependencies"]}
    declared |= {package_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    pip_lines = re.findall(r"^\s+- (?!-e )(\S.*)$", (ROOT / "environment.yml").read_text().split("- pip:")[1], re.M)
    assert {package_name(r) for r in pip_lines} == declared


def test_lock_pins_every_declared_package_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {package_name(r) for r in project["dependencies"]}
    declared |= {package_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[package_name(name)] = version
    assert declared <= set(pins), declared - set(pins)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
