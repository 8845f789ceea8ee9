"""Output folders that appear whole or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from .errors import UserError


def check_output_dir(path: str, overwrite: bool) -> None:
    """Fail early (before any expensive work) if ``path`` exists and may not be replaced."""
    if os.path.exists(path) and not overwrite:
        raise UserError(f"output {path} already exists (pass --overwrite to replace it)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"parent folder of output {path} does not exist")


@contextlib.contextmanager
def atomic_output_dir(path: str, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; rename it to ``path`` only on success.

    On any exception (Ctrl-C included) the temporary folder is removed, so a
    half-written output never appears under the requested name.
    """
    check_output_dir(path, overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dir_size_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> str:
    """Where tfquant caches prepared models and benchmark results (TFQUANT_CACHE overrides)."""
    return os.environ.get("TFQUANT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tfquant")
