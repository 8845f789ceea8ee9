"""Output folders and files that appear whole or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Optional

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


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: readers see the old file or
    the whole new one, and an interrupted write (Ctrl-C included) leaves nothing behind.

    The temporary file is opened with mode 0o666 (less the umask), so the result gets the permissions a plain
    ``open(path, "w")`` would give it (``tempfile.mkstemp`` would make every output 0o600).
    """
    import secrets

    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text, with the newlines as given (no platform translation)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, data, indent: Optional[int] = 2, sort_keys: bool = False) -> None:
    """``data`` as JSON, one trailing newline, written atomically."""
    import json

    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
