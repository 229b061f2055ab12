"""A restricted unpickler for the numpy-array pickles shipped inside data packages.

Plain unpickling runs whatever callable a pickle names, so a tampered package file
could execute code. This unpickler resolves only the handful of numpy/builtin names
that arrays, dtypes and numpy scalars need and refuses everything else.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy._core.multiarray as _multiarray
import numpy._core.numeric as _numeric

# (module, name) -> object. Both the numpy 1 ("numpy.core") and numpy 2 ("numpy._core")
# spellings map to the numpy 2 objects directly, so old pickles load without touching
# the deprecated numpy.core shim.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # pickle protocol 5 arrays
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    # protocol-2 pickles written by Python 3 store raw bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): __import__("_codecs").encode,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("__builtin__", "tuple"): tuple,
    ("__builtin__", "list"): list,
    ("__builtin__", "dict"): dict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays, dtypes, numpy scalars and containers."""

    def __init__(self, file: IO[bytes], *, source: str = "<stream>") -> None:
        # latin1 lets Python 2 pickles (str holding raw array bytes) decode losslessly.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._source}: refused to load global {module}.{name} "
                "(only numpy arrays, dtypes and scalars are allowed)"
            ) from None


def _open(path: Path) -> IO[bytes]:
    # Data packages ship gzip'd pickles; sniff the magic bytes rather than trust the suffix.
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def safe_load_pickle(source: str | Path | IO[bytes] | bytes) -> Any:
    """Load a (possibly gzip'd) pickle that may contain only numpy data.

    source: a path, an open binary file, or the pickle bytes themselves.
    Raises pickle.UnpicklingError naming the source for any disallowed global and
    for truncated/corrupt data.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load(io.BytesIO(bytes(source)), "<bytes>")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pickle file not found")
        with _open(path) as fh:
            return _load(fh, str(path))
    return _load(source, getattr(source, "name", "<stream>"))


def _load(fh: IO[bytes], name: str) -> Any:
    try:
        return RestrictedUnpickler(fh, source=name).load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith(f"{name}: "):  # our own refusal, already names the source
            raise
        raise pickle.UnpicklingError(f"{name}: corrupt or unreadable pickle ({exc})") from exc
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # Corrupt/truncated files surface as assorted errors; report them uniformly.
        raise pickle.UnpicklingError(f"{name}: corrupt or unreadable pickle ({exc})") from exc
