"""A bundle's checksum manifest and its signature: what may be opened, and proof nobody edited the list.

``checksums.json`` maps every file of a bundle (path relative to the bundle folder) to its SHA-256;
``checksums.sig`` holds an HMAC-SHA256 of ``checksums.json``'s exact bytes under the bundle-signing key. Export
writes both (:func:`write_checksums`); the loader checks the signature, then every listed file
(:func:`verified_checksums`), and opens nothing the manifest does not list. Neither file lists itself, and
``RETRAIN_REQUIRED.json`` (a marker ``o2o erase`` adds later) is never listed.

The key: ``$O2O_BUNDLE_KEY`` when set (any non-empty string; production sets it from a secret store, the
same on every host that exports or serves). When unset, a random key is generated once into
``$O2O_HOME/bundle.key`` (default ``~/.o2o/bundle.key``, mode 0600) by the first export on the machine, with a
warning; a loader without either refuses the bundle rather than trust it. No torch here: both the exporter
and the serving side import this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from data_prep import schema as S
from data_prep.manifest import file_sha256

BUNDLE_KEY_ENV = "O2O_BUNDLE_KEY"
HOME_ENV = "O2O_HOME"  # as data_prep.pii (not imported: the service image does not install its phonenumbers)
KEY_FILE = "bundle.key"
SIGNATURE_FILE = "checksums.sig"
ALGORITHM = "hmac-sha256"
UNLISTED = frozenset({S.CHECKSUMS_FILE, SIGNATURE_FILE, S.RETRAIN_MARKER})  # never in checksums.json
log = logging.getLogger(__name__)


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, altered or of another contract; the message names the file and what
    to do."""


def key_path() -> Path:
    return Path(os.environ.get(HOME_ENV, Path.home() / ".o2o")) / KEY_FILE


def signing_key(create: bool = False) -> bytes:
    """The bundle-signing key: ``$O2O_BUNDLE_KEY``, else the local key file, generated when ``create``
    (export) and missing. BundleError when there is no key and ``create`` is false (loading)."""
    env = os.environ.get(BUNDLE_KEY_ENV)
    if env:
        return env.encode()
    path = key_path()
    if not path.is_file():
        if not create:
            raise BundleError(
                f"no bundle-signing key: {BUNDLE_KEY_ENV} is unset and {path} does not exist; set "
                f"{BUNDLE_KEY_ENV} to the key the bundle was exported with"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from the first byte
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        log.warning(
            "%s is unset: generated a local bundle-signing key at %s; bundles signed with it load only where "
            "that key is (elsewhere set %s to its contents)",
            BUNDLE_KEY_ENV,
            path,
            BUNDLE_KEY_ENV,
        )
    return path.read_text().strip().encode()


def signature(manifest: bytes, key: bytes) -> str:
    """Hex HMAC-SHA256 of ``manifest`` (the bytes of ``checksums.json``) under ``key``."""
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def write_checksums(bundle_dir: Path) -> dict[str, str]:
    """Write ``checksums.json`` (SHA-256 of every file under ``bundle_dir`` but the unlisted ones) and its
    signature ``checksums.sig``; returns the checksums."""
    sums = {
        p.relative_to(bundle_dir).as_posix(): file_sha256(p)
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.relative_to(bundle_dir).as_posix() not in UNLISTED
    }
    manifest = json.dumps(sums, indent=2).encode()
    (bundle_dir / S.CHECKSUMS_FILE).write_bytes(manifest)
    doc = {"algorithm": ALGORITHM, "hmac": signature(manifest, signing_key(create=True))}
    (bundle_dir / SIGNATURE_FILE).write_text(json.dumps(doc, indent=2))
    return sums


def verified_checksums(bundle_dir: Path) -> dict[str, str]:
    """The checksums of ``bundle_dir`` once its signature and every listed file are verified.

    BundleError, naming the file, when ``checksums.json`` or its signature is missing, unreadable or does
    not match (an edited manifest, or a bundle signed with another key), or a listed file is missing or
    altered.
    """
    sums_path, sig_path = bundle_dir / S.CHECKSUMS_FILE, bundle_dir / SIGNATURE_FILE
    if not sums_path.is_file():
        raise BundleError(f"{bundle_dir}: no {S.CHECKSUMS_FILE}; not an exported bundle")
    if not sig_path.is_file():
        raise BundleError(f"{sig_path} is missing: the bundle is unsigned; re-export the bundle")
    try:
        key = signing_key()
    except BundleError as e:
        raise BundleError(f"cannot check {sig_path}: {e}") from None
    manifest = sums_path.read_bytes()
    try:
        sig = json.loads(sig_path.read_text())
        ok = sig["algorithm"] == ALGORITHM and hmac.compare_digest(str(sig["hmac"]), signature(manifest, key))
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{sig_path} is not a bundle signature; re-export the bundle") from None
    if not ok:
        raise BundleError(
            f"{sums_path} does not match its signature {sig_path}: the manifest was edited, or the bundle was "
            f"signed with another key; re-export the bundle, or set {BUNDLE_KEY_ENV} to the key it was "
            "exported with"
        )
    sums: dict[str, str] = json.loads(manifest)
    for rel, expected in sums.items():
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"{path}: listed in {S.CHECKSUMS_FILE} but missing")
        if file_sha256(path) != expected:
            raise BundleError(f"{path}: checksum mismatch (file altered or truncated); re-export the bundle")
    return sums
