"""Read ``torch.save`` checkpoints (``pytorch_model.bin``) into numpy, without torch and without running code.

The format torch has written since 1.6 (torch 2.x still writes it) is a zip archive whose entries are
stored uncompressed:

    <archive>/data.pkl      a pickle (protocol 2) of the state dict
    <archive>/data/<key>    the raw bytes of one storage, little-endian
    <archive>/byteorder     "little" (files from before torch 1.10 lack it; they are little-endian too)
    <archive>/version, .format_version, .storage_alignment, .data/serialization_id   (not needed here)

In ``data.pkl`` every tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks)``, where ``storage`` is the persistent id
``("storage", torch.FloatStorage, key, location, numel)`` (one class per dtype) and ``backward_hooks`` an
empty ``collections.OrderedDict()``.

Why not ``pickle.load``: a pickle may name and call any importable function (``os.system`` ...), so
loading a downloaded checkpoint with it runs whatever its author wrote.  ``_TensorUnpickler`` resolves
only the globals listed above, to stand-ins of our own, and refuses every other name before importing
anything.

Storages are windows on one read-only memory map of the file, and contiguous tensors are returned as
read-only views of it, so a 10 GB shard costs no memory until its tensors are used, and each byte is
read from disk once.  Transposed or strided tensors are copied; bfloat16 (which numpy lacks) is widened
to float32.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import NamedTuple

import numpy as np

from .errors import UserError

# Storage class (a global in the pickle) -> dtype of its elements.  bfloat16 bits are read as uint16 and
# widened to float32 once the tensor is built.  Complex and quantized storages are refused: no causal LM
# checkpoint tfquant reads holds them.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header; the name and the extra field follow it

# Errors the unpickler raises on a damaged or hand-made data.pkl (wrong arity, wrong types, bad opcodes).
_CORRUPT_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                          IndexError, KeyError, RecursionError)


class _StorageType(NamedTuple):
    """What ``torch.FloatStorage`` & co. resolve to: a tag (a tuple, so a pickle cannot call it)."""
    name: str


class _Storage(NamedTuple):
    key: str
    values: np.ndarray  # 1-D, the storage's elements
    is_bf16: bool


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
    """All tensors of a ``torch.save`` state dict, as numpy arrays (bfloat16 widened to float32).

    Contiguous tensors are read-only views of the memory-mapped file: copy one before writing into it.
    Raises UserError, naming ``path``, for a file that is not such a checkpoint, is damaged, or whose
    pickle names anything other than tensors.
    """
    with _open_zip(path) as zf:
        archive = _ZipEntries(path, zf)
        prefix = _archive_prefix(path, zf)
        _check_byteorder(path, archive, prefix)
        try:
            pickled = zf.read(f"{prefix}/data.pkl")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UserError(f"{path}: {prefix}/data.pkl is corrupt ({exc})") from None
        unpickler = _TensorUnpickler(path, archive, prefix, pickled)
        try:
            state = unpickler.load()
        except _CORRUPT_PICKLE_ERRORS as exc:
            # chained, not hidden: the same exception types could also come from a bug in this module
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            raise UserError(f"{path}: data.pkl is corrupt ({type(exc).__name__}: {first_line})") from exc
    return _checked_state_dict(path, state)


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error):
        raise UserError(f"{path}: {_why_not_a_zip(path)}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _why_not_a_zip(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == _LOCAL_HEADER:  # the archive starts like a zip, but its central directory at the end is gone
        return "truncated or corrupt zip archive (its central directory is missing)"
    if head[:1] == b"\x80":  # a bare pickle: torch.save before 1.6, or _use_new_zipfile_serialization=False
        return ("legacy torch < 1.6 (non-zip) checkpoint, which tfquant does not read: "
                "re-save it with torch >= 1.6 or convert it to safetensors")
    return "not a PyTorch checkpoint (not a zip archive)"


def _archive_prefix(path: str, zf: zipfile.ZipFile) -> str:
    """The one top-level folder holding data.pkl ("archive" in old files, the file's stem in new ones)."""
    prefixes = [name[: -len("/data.pkl")] for name in zf.namelist()
                if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(prefixes) != 1:
        raise UserError(f"{path}: a zip archive but not a torch.save checkpoint "
                        f"({len(prefixes)} <archive>/data.pkl entries, expected 1)")
    return prefixes[0]


def _check_byteorder(path: str, archive: _ZipEntries, prefix: str) -> None:
    if f"{prefix}/byteorder" not in archive.names:
        return
    order = bytes(archive.entry(f"{prefix}/byteorder")).strip()
    if order != b"little":
        raise UserError(f"{path}: storages are {order.decode(errors='replace')}-endian; "
                        "tfquant reads little-endian checkpoints only")


class _ZipEntries:
    """Entries of an open zip as uint8 arrays: windows on a read-only memory map of the file."""

    def __init__(self, path: str, zf: zipfile.ZipFile):
        self._path = path
        self._zf = zf
        self._file = np.memmap(path, dtype=np.uint8, mode="r")
        self.names = set(zf.namelist())

    def entry(self, name: str) -> np.ndarray:
        info = self._zf.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses, other zip tools may
            return np.frombuffer(self._zf.read(name), np.uint8)
        start = self._data_offset(info)
        end = start + info.file_size
        if end > self._file.size:
            raise UserError(f"{self._path}: truncated ({name} ends at byte {end}, the file has {self._file.size})")
        return self._file[start:end]

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        # The central directory does not say where an entry's data starts: the local header before it
        # has its own copy of the name and an extra field (torch pads it to align storages to 64 bytes).
        at = info.header_offset
        header = bytes(self._file[at:at + _LOCAL_HEADER_SIZE])
        if len(header) < _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER:
            raise UserError(f"{self._path}: corrupt zip archive (no local header for {info.filename} at byte {at})")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return at + _LOCAL_HEADER_SIZE + name_len + extra_len


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict, resolving only the globals torch writes for tensors."""

    def __init__(self, path: str, archive: _ZipEntries, prefix: str, pickled: bytes):
        super().__init__(io.BytesIO(pickled))
        self._path = path
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, _Storage] = {}  # views of one storage (q/k/v slices, ...) share one read
        self._rebuilders = {
            "_rebuild_tensor": self._rebuild_tensor,
            "_rebuild_tensor_v2": self._rebuild_tensor_v2,
            "_rebuild_parameter": self._rebuild_parameter,
        }

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch._utils" and name in self._rebuilders:
            return self._rebuilders[name]
        raise UserError(f"{self._path}: refusing to load global '{module}.{name}' from the pickle "
                        "(only tensors are allowed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise UserError(f"{self._path}: unsupported persistent id {pid!r:.100} in the pickle")
        _, storage_type, key, _location, numel = pid  # location ("cpu", "cuda:0"): everything loads to numpy
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, key, numel)
        return self._storages[key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> _Storage:
        dtype = _STORAGE_DTYPES[storage_type.name]
        name = f"{self._prefix}/data/{key}"
        if name not in self._archive.names:
            raise UserError(f"{self._path}: the pickle names storage {key}, which the archive lacks ({name})")
        raw = self._archive.entry(name)
        if raw.size != numel * dtype.itemsize:
            raise UserError(f"{self._path}: storage {key} holds {raw.size} bytes, the pickle says "
                            f"{numel} x {dtype.itemsize}")
        return _Storage(key, raw.view(dtype), storage_type.name == "BFloat16Storage")

    # The three rebuild functions torch names, with torch's signatures.  requires_grad and the (always
    # empty) backward hooks only matter for training, so they are ignored.
    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return _tensor_from_storage(self._path, storage, storage_offset, size, stride)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           metadata=None):
        if metadata:  # only set for lazy conj/neg views, which torch.save of a state dict does not produce
            raise UserError(f"{self._path}: a tensor carries view metadata {metadata!r:.100}, which tfquant "
                            "does not apply")
        return _tensor_from_storage(self._path, storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        return data  # an nn.Parameter: the tensor inside is all that is needed


def _tensor_from_storage(path: str, storage, offset, size, stride) -> np.ndarray:
    """The tensor ``storage[offset]`` with ``size`` and ``stride`` (in elements), checked to stay inside it."""
    if not (isinstance(storage, _Storage) and _is_index(offset) and _are_indices(size) and _are_indices(stride)
            and len(size) == len(stride)):
        raise UserError(f"{path}: data.pkl is corrupt (a tensor record is malformed)")
    values = storage.values
    # as_strided does no bounds checking: without this a crafted file could read memory outside the map.
    if all(n > 0 for n in size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= values.size:
            raise UserError(f"{path}: a tensor of shape {tuple(size)} reads past the end of storage "
                            f"{storage.key} ({values.size} elements)")
    view = np.lib.stride_tricks.as_strided(values[offset:], shape=tuple(size),
                                           strides=tuple(s * values.itemsize for s in stride), writeable=False)
    if storage.is_bf16:
        # bfloat16 is the top half of a float32: shifting its bits up 16 widens it exactly.  In place and
        # by a uint32, so that a 0-d tensor stays a uint32 array (numpy 1.x would promote it to int64).
        bits = view.astype(np.uint32, order="C")
        bits <<= np.uint32(16)
        return bits.view(np.float32)
    return view if view.flags.c_contiguous else view.copy()


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _are_indices(xs) -> bool:
    return isinstance(xs, tuple) and all(_is_index(x) for x in xs)


def _checked_state_dict(path: str, state) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds an object of type {type(state).__name__}, not a state dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise UserError(f"{path}: entry {key!r:.100} is of type {type(value).__name__}, not a tensor")
    return dict(state)
