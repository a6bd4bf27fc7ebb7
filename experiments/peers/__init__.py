"""Peer libraries' SASRec, each run in its own virtual environment (protocol "Peers" in PROTOCOLS.md).

RecTools and RecBole cannot share our environment (both need numpy < 2), so each peer gets a venv built
from a pinned requirements file beside this module, and a standalone runner script (``run_<name>.py``)
that is executed with that venv's python. The runner reads a leave-one-out split we write (``train.csv``,
``val.csv``, ``config.json``) and writes the peer's top-k lists (``topk.csv``) plus ``result.json``; every
metric is then computed by our own code. See ``_common.py`` for the file contract.

This module is imported from the main environment, so it uses only the standard library.

Requirements files: one requirement per line, pinned. A line ending in ``# o2o: no-deps`` is installed in a
second step with ``pip install --no-deps`` (RecBole pins ``ray<=2.6.3`` although ray is imported only by
its ``quick_start`` and hyper-parameter tuning modules, which the runner does not use).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS = ("rectools", "recbole")

#: Installed before anything else, alone, so that it resolves to the local CPU wheel; later steps are
#: constrained to it so no resolver can swap in another (CUDA) build.
TORCH_PIN = "torch==2.13.0"

#: Imported once the environment is built, to prove the runner's imports work before writing the stamp.
_IMPORT_CHECK = {
    "rectools": "import rectools, torch; from rectools.models import SASRecModel",
    "recbole": (
        "import recbole, torch; from recbole.config import Config; from recbole.data import create_dataset; "
        "from recbole.model.sequential_recommender import SASRec; from recbole.trainer import Trainer"
    ),
}

_HERE = Path(__file__).resolve().parent
_NO_DEPS_MARK = "# o2o: no-deps"
_STAMP = "o2o-env-complete.json"


def _check_name(name: str) -> None:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {PEERS}")


def requirements_file(name: str) -> Path:
    """The pinned requirements file of peer ``name``."""
    _check_name(name)
    return _HERE / f"requirements-{name}.txt"


def default_root() -> Path:
    """``$O2O_HOME/peers`` (``O2O_HOME`` defaults to ``~/.o2o``)."""
    return Path(os.environ.get("O2O_HOME", "~/.o2o")).expanduser() / "peers"


def env_dir(name: str, root: Path | None = None) -> Path:
    """Where the venv of peer ``name`` lives: named by a hash of its requirements, torch pin and python."""
    digest = hashlib.sha256()
    digest.update(requirements_file(name).read_bytes())
    digest.update(TORCH_PIN.encode())
    digest.update(_python_id().encode())
    return (root or default_root()) / f"{name}-{digest.hexdigest()[:12]}"


def _python_id() -> str:
    return f"{sys.implementation.name}-{platform.python_version()}"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _split_requirements(path: Path) -> tuple[list[str], list[str]]:
    """(ordinary requirements, requirements to install with --no-deps) of a requirements file."""
    normal: list[str] = []
    no_deps: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith(_NO_DEPS_MARK):
            no_deps.append(line[: -len(_NO_DEPS_MARK)].strip())
        else:
            normal.append(line.split(" #", 1)[0].strip())
    return normal, no_deps


def _run_logged(cmd: list[str], log_file: Path, log: Callable[[str], Any]) -> None:
    """Run ``cmd``, appending its output to ``log_file``; raise with the log's tail if it fails."""
    log(f"  $ {' '.join(str(c) for c in cmd)}")
    with log_file.open("a") as fh:
        fh.write(f"\n$ {' '.join(str(c) for c in cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_child_env())
    if rc != 0:
        raise RuntimeError(
            f"command failed (exit {rc}): {' '.join(cmd)}\n--- tail of {log_file} ---\n{_tail(log_file)}"
        )


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment minus anything that would leak the calling venv into the peer's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra or {})
    return env


def _tail(path: Path, n: int = 40) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except OSError:
        return "(no log)"


def ensure_env(name: str, root: Path | None = None, log: Callable[[str], Any] = print) -> Path:
    """Build (once) the venv of peer ``name`` and return its python.

    Steps: ``python -m venv``; ``pip install torch==2.13.0`` alone; ``pip install -r`` the requirements
    (constrained to that torch); the ``--no-deps`` lines; an import check; ``pip freeze`` kept beside the
    stamp. The stamp is written last, so a venv without one is half-built and is removed and rebuilt.
    """
    _check_name(name)
    venv = env_dir(name, root)
    python = _venv_python(venv)
    stamp = venv / _STAMP
    if stamp.is_file() and python.exists():
        return python
    if venv.exists():
        log(f"peer env {name}: removing half-built {venv}")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"peer env {name}: building {venv}")
    install_log = venv.parent / f"{venv.name}.install.log"
    install_log.write_text("")
    _run_logged([sys.executable, "-m", "venv", str(venv)], install_log, log)
    pip = [str(python), "-m", "pip", "install", "--no-input"]
    _run_logged([*pip, TORCH_PIN], install_log, log)
    normal, no_deps = _split_requirements(requirements_file(name))
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(normal) + "\n")
        _run_logged([*pip, "-c", str(constraints), "-r", str(reqs)], install_log, log)
        if no_deps:
            _run_logged([*pip, "--no-deps", "-c", str(constraints), *no_deps], install_log, log)
    _run_logged([str(python), "-c", _IMPORT_CHECK[name]], install_log, log)
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True, env=_child_env()
    ).stdout
    (venv / "o2o-freeze.txt").write_text(freeze)
    torch_line = next((ln for ln in freeze.splitlines() if ln.lower().startswith("torch==")), "")
    if not torch_line.startswith(TORCH_PIN):
        raise RuntimeError(f"peer env {name}: expected {TORCH_PIN}, found {torch_line or 'no torch'}")
    seconds = time.perf_counter() - started
    info = {"peer": name, "python": _python_id(), "torch": torch_line, "install_seconds": seconds}
    shutil.move(str(install_log), str(venv / "o2o-install.log"))
    stamp.write_text(json.dumps(info, indent=1) + "\n")
    log(f"peer env {name}: ready in {seconds:.0f} s")
    return python


def run_peer(
    name: str,
    input_dir: Path,
    output_dir: Path,
    python: Path,
    timeout_s: float | None = None,
    log: Callable[[str], Any] | None = None,
) -> dict:
    """Run ``run_<name>.py`` with the peer's python on ``input_dir``; return its parsed ``result.json``.

    The runner's stdout and stderr go to ``output_dir/log.txt`` as they come (and to ``log`` line by line
    when given). Old ``topk.csv`` / ``result.json`` are removed first, so a failed run never leaves a
    stale result. A non-zero exit, a timeout or missing outputs raise RuntimeError with the log's tail.
    """
    _check_name(name)
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("topk.csv", "result.json"):
        (output_dir / stale).unlink(missing_ok=True)
    log_path = output_dir / "log.txt"
    script = _HERE / f"run_{name}.py"
    cmd = [str(python), str(script), "--input", str(input_dir), "--output", str(output_dir)]
    with log_path.open("w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=_child_env({"PYTHONUNBUFFERED": "1"}),
            cwd=output_dir,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                if log is not None:
                    log(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            reader.join(5)
            raise RuntimeError(
                f"peer {name} timed out after {timeout_s} s\n--- tail of {log_path} ---\n{_tail(log_path)}"
            ) from None
        reader.join()
    if rc != 0:
        raise RuntimeError(f"peer {name} failed (exit {rc})\n--- tail of {log_path} ---\n{_tail(log_path)}")
    result_path = output_dir / "result.json"
    if not result_path.is_file() or not (output_dir / "topk.csv").is_file():
        raise RuntimeError(f"peer {name} exited 0 without topk.csv/result.json\n{_tail(log_path)}")
    return json.loads(result_path.read_text())


def _kill_group(proc: subprocess.Popen) -> None:
    """End the runner and anything it started (its own session), politely first."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
