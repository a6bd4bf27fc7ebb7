"""bentofile.yaml: its packages are pyproject's and cover what the service imports; `bentoml build` makes a
bento of the service with no network."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from serving.artifact import register_bundle
from tests.conftest import Pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
BENTOFILE = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
PACKAGES: list[str] = BENTOFILE["python"]["packages"]
SERVED_PACKAGES = ("serving", "models", "data_prep")  # what the service imports of this project
# the distributions of the modules importing the service loads (not those the interpreter started with)
IMPORTED_DISTRIBUTIONS = """
import importlib.metadata, json, sys
before = set(sys.modules)
import serving.service
names = importlib.metadata.packages_distributions()
print(json.dumps(sorted({d for m in set(sys.modules) - before for d in names.get(m.partition(".")[0], [])})))
"""


def requirement_closure(requirements: Iterable[str]) -> set[str]:
    """Every distribution installing ``requirements`` brings in (markers evaluated here, no extras)."""
    seen: set[str] = set()
    todo = [Requirement(r).name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_bentofile_packages_are_pyproject_dependencies_as_written() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert set(PACKAGES) <= set(project["dependencies"])
    assert BENTOFILE["python"]["lock_packages"] is False  # locking resolves against PyPI at build time


def test_bentofile_packages_install_everything_the_service_imports() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTED_DISTRIBUTIONS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    imported = {canonicalize_name(d) for d in json.loads(out)} - {"o2o-sequence-lab"}
    assert "onnxruntime" in imported and "torch" not in imported  # the check sees real imports
    assert imported - requirement_closure(PACKAGES) == set()


def offline(cmd: list[str]) -> list[str]:
    """``cmd`` in a network namespace of its own (no network at all) where ``unshare`` allows it; the caller
    also points pip and uv away from any index."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    ):
        return ["unshare", "-rn", *cmd]
    return cmd


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_of_the_service_offline(
    bentoml_home: Path, tiny_pipeline: Pipeline
) -> None:
    tag = register_bundle(tiny_pipeline.bundle)  # a real, signed bundle: the store verifies it
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}
    cmd = offline([sys.executable, "-m", "bentoml", "build", "--output", "tag"])
    r = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    found = re.search(r"__tag__:([\w.-]+):([\w.-]+)", r.stdout)
    assert found is not None, r.stdout
    name, version = found.groups()
    bento = bentoml_home / "bentos" / name / version  # built into $BENTOML_HOME

    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert name == "o2o-service" and info["service"] == "serving.service:O2OService"
    assert [s["name"] for s in info["services"]] == ["O2OService"]
    assert {r["route"] for r in info["schema"]["routes"]} >= {
        "/recommend",
        "/intent",
        "/events",
        "/similar-items",
    }
    assert [m["tag"] for m in info["models"]] == [tag]  # `latest` resolved to the registered version
    assert {"name": "O2O_BUNDLE", "value": "o2o-bundle:latest", "stage": "all"} in info["envs"]

    src = bento / "src"
    for package in SERVED_PACKAGES:
        expected = {p.relative_to(REPO_ROOT) for p in (REPO_ROOT / package).rglob("*.py")}
        assert {p.relative_to(src) for p in (src / package).rglob("*.py")} == expected
    assert sorted(p.name for p in src.iterdir()) == ["bentofile.yaml", *sorted(SERVED_PACKAGES)]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert set(PACKAGES) <= set(requirements) and not any(line.startswith("torch") for line in requirements)
    assert "ENV O2O_BUNDLE=$O2O_BUNDLE" in (bento / "env" / "docker" / "Dockerfile").read_text()
