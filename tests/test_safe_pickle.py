"""ecos_core.data.safe_pickle: the restricted unpickler for the pickled built-in data."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ecos_core.data import safe_load_pickle


# --------------------------------------------------------------------------- safe pickle


class _Evil:
    def __reduce__(self):  # noqa: D105 - the classic code-execution payload
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_round_trips_numpy(protocol: int, tmp_path: Path) -> None:
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64)), np.float64(2.5), [np.dtype("u1")])
    path = tmp_path / "a.pkl.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    (x, y), scalar, [dtype] = safe_load_pickle(path)
    np.testing.assert_array_equal(x, obj[0][0])
    np.testing.assert_array_equal(y, obj[0][1])
    assert scalar == 2.5 and dtype == np.uint8


def test_safe_pickle_reads_python2_pickles() -> None:
    # Hand-written Python 2 protocol-2 pickle of np.array([1, 2, 255], uint8): numpy.core
    # module path, array bytes stored as a py2 str (SHORT_BINSTRING) -> needs latin1.
    py2 = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02U\x01b\x87q\x03Rq\x04"
        b"(K\x01K\x03\x85q\x05cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tbI00\nU\x03\x01\x02\xfftb."
    )
    np.testing.assert_array_equal(safe_load_pickle(py2), np.array([1, 2, 255], np.uint8))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_safe_pickle_refuses_code_execution(protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(), protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl.*(system|posix)"):
        safe_load_pickle(path)
    with pytest.raises(pickle.UnpicklingError):
        safe_load_pickle(pickle.dumps({"x": eval}))  # builtins.eval is not on the list


def test_safe_pickle_reports_corrupt_and_missing(tmp_path: Path) -> None:
    good = pickle.dumps(np.arange(100), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="corrupt"):
        safe_load_pickle(good[:40])
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        safe_load_pickle(tmp_path / "nope.pkl")


def test_repository_never_calls_plain_pickle_load() -> None:
    root = Path(__file__).resolve().parents[1] / "ecos_core"
    for path in root.rglob("*.py"):
        text = path.read_text()
        banned = ("pickle." + "load(", "pickle." + "loads(")  # split so this file passes the grep too
        assert not any(b in text for b in banned), path
