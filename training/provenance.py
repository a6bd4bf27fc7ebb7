"""Where a run's numbers came from: the code's git commit, package versions, seed and host.

Written into every run directory as ``provenance.json`` when the run starts (so a killed run has it too);
each resume adds a record of its own. Every probe fails soft: outside a git checkout the commit is None,
an uninstalled package is left out.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROVENANCE_FILE = "provenance.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "o2o-sequence-lab",
    "torch",
    "lightning",
    "optuna",
    "onnxruntime",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "bentoml",
    "tensorboardX",
)


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout at ``root``; both None when ``root`` is not the top
    of a git checkout (an installed package) or git is missing. Dirty counts untracked files too: a new
    module changes the code as much as an edited one."""
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        head = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.strip() or None, "dirty": bool(status.strip())}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's version and each installed package's; packages that are not installed are left out."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def host() -> dict[str, Any]:
    """The machine: platform, CPU count, torch threads, and the GPU when there is one."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def collect_provenance(seed: int) -> dict[str, Any]:
    """One record of the code, packages, seed and host of this process, stamped with the time (UTC)."""
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "packages": package_versions(),
        "seed": seed,
        "host": host(),
        "command": list(sys.argv),
    }


def write_provenance(run_dir: Path, seed: int, resumed_from_epoch: int | None = None) -> dict[str, Any]:
    """Write ``run_dir/provenance.json`` for a new run, or (``resumed_from_epoch`` given) add this
    process's record to the run's ``resumes`` list: the code that finished a run may differ from the code
    that began it, and both are recorded. Returns the file's content."""
    path = run_dir / PROVENANCE_FILE
    record = collect_provenance(seed)
    if resumed_from_epoch is None:
        doc = record
    else:
        doc = json.loads(path.read_text()) if path.is_file() else {}
        doc.setdefault("resumes", []).append({**record, "from_epoch": resumed_from_epoch})
    path.write_text(json.dumps(doc, indent=2))
    return doc
