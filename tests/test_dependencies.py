"""The installed transformers and torch satisfy the bounds pyproject.toml declares, so a bound that the
environment the suite runs in contradicts fails the suite. The lower bound of transformers (5.16.0) is the
lowest release with which the transformers tests pass: 5.0-5.15 lack the module layout the backbones adapt
(``SwinRelativePositionBias``, ``ViTModel.layers``) or load a bare ``ViTModel`` checkpoint's layers as new
weights. It is proven only by running the suite with that release installed."""

import importlib.metadata
from pathlib import Path

import pytest

# packaging is a dependency of transformers: wherever these tests run, it is installed.
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared() -> dict[str, Requirement]:
    """pyproject.toml's ``[project] dependencies``, by package name."""
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {req.name: req for req in map(Requirement, deps)}


@pytest.mark.parametrize("package", ["transformers", "torch"])
def test_installed_version_satisfies_the_declared_bound(package):
    requirement = declared()[package]
    installed = Version(importlib.metadata.version(package))  # torch's local label (+cpu) is allowed
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{package} {installed} is installed but pyproject.toml declares {requirement}"
    )


def test_the_bounds_are_ranges_with_a_floor():
    """Both packages are bounded below (a floor is what the backbones need), transformers also above."""
    deps = declared()
    for package in ("transformers", "torch"):
        assert any(s.operator == ">=" for s in deps[package].specifier), f"{package}: no lower bound"
    assert any(s.operator == "<" for s in deps["transformers"].specifier), "transformers: no upper bound"
