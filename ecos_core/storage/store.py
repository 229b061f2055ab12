"""The artifact store: one fsspec URL (a local folder by default, s3://bucket/prefix).

Keys are '/'-separated paths under the root. Heavy arrays are .npy loaded with
allow_pickle=False, metadata is JSON; nothing here ever unpickles.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlparse

import fsspec
import numpy as np


class StoreError(RuntimeError):
    """The store cannot be reached or an object cannot be read/written; names the URL."""


# botocore >= 1.36 checks every GET against the object's stored checksum; rclone (and
# other S3 servers) answer a *ranged* GET with the whole object's CRC32, so each range of
# an object s3fs reads in parts (over ~50 MiB) fails. "when_required" is botocore's
# documented switch back to checksums only where an operation demands them.
S3_CHECKSUM_CONFIG: dict[str, str] = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}


def with_s3_defaults(url: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """`options` with S3_CHECKSUM_CONFIG merged into its config_kwargs for an s3:// URL,
    so every Store (CLI, worker, watcher, Dask workers, devices) reads large objects;
    what the caller says explicitly wins. Other URLs get `options` unchanged."""
    options = dict(options or {})
    if url.startswith(("s3://", "s3a://")):
        options["config_kwargs"] = {**S3_CHECKSUM_CONFIG, **options.get("config_kwargs", {})}
    return options


@contextlib.contextmanager
def _backend_errors(where: str) -> Iterator[None]:
    """Backend failures (botocore's EndpointConnectionError, OSError, ...) become one
    StoreError naming the store URL, so retries and messages treat them alike. Missing
    and already-existing objects keep their own meaning."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, StoreError, ValueError):
        raise
    except Exception as err:  # noqa: BLE001 - any other backend error is "store unavailable"
        raise StoreError(f"{where}: store unavailable ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class Version:
    """One version of an object: tells a replaced upload from a re-read one (the S3 ETag is
    the content's MD5; a local file has its mtime in ns), and an upload that landed after
    a deadline."""

    size: int
    modified: datetime  # UTC
    tag: str

    @staticmethod
    def of(info: dict) -> "Version":
        stamp = info.get("mtime", info.get("created"))  # local files; in-memory ones only have "created"
        modified = info.get("LastModified") or datetime.fromtimestamp(stamp, timezone.utc)
        tag = str(info.get("ETag") or stamp).strip('"')
        return Version(int(info["size"]), modified.astimezone(timezone.utc), tag)

    @property
    def id(self) -> str:
        return f"{self.size}-{self.modified.isoformat()}-{self.tag}"


class Store:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.options = with_s3_defaults(self.url, storage_options)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options)
        except (ImportError, ValueError) as err:
            raise StoreError(f"store {url!r}: {err}") from None
        self.root = self.root.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"store key {key!r} must be relative and stay under the root")
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def check(self) -> None:
        """Fail fast with a clear message when the store is unreachable or read-only."""
        probe_key = f".ecos-check-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(self.path(probe_key), b"ok")
            self.fs.rm_file(self.path(probe_key))
        except Exception as err:  # any backend error means the same thing to the user
            raise StoreError(f"store {self.url} is not reachable/writable: {type(err).__name__}: {err}") from None

    def presign(self, key: str, method: str, until: datetime) -> str:
        """A URL that lets its holder GET or PUT exactly this object until `until`, and not
        a moment later, without credentials: how devices fetch their probe and upload their
        own response (the signature covers the key, so they cannot write anywhere else). A
        local store returns a file:// URL instead (same machine, no signature possible)."""
        if self.is_local:
            return "file://" + self.path(key)
        if not self.url.startswith("s3://"):
            raise StoreError(f"store {self.url}: pre-signed URLs need a local or s3:// store")
        client = self._signer()
        bucket, _, object_key = self.path(key).partition("/")
        operation = {"get": "get_object", "put": "put_object"}[method]
        params = {"Bucket": bucket, "Key": object_key}
        # a URL expires at its signing time (whole seconds, in the URL) + ExpiresIn: sign,
        # read the signing time back and shorten the lifetime so it ends at `until` or before
        expires = max(1, int((until - datetime.now(timezone.utc)).total_seconds()) + 1)
        while True:
            url = client.generate_presigned_url(operation, Params=params, ExpiresIn=expires)
            signed_at = datetime.strptime(parse_qs(urlparse(url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
            exact = int((until - signed_at.replace(tzinfo=timezone.utc)).total_seconds())  # floor for a future `until`
            if exact < 1:
                raise ValueError(f"{self.uri(key)}: cannot sign a URL that ends at {until.isoformat()}: under a second away")
            if expires <= exact:
                return url
            expires = exact

    @functools.lru_cache(maxsize=1)  # noqa: B019 - one signer per Store: creating one costs ~50 ms
    def _signer(self):  # noqa: ANN202
        import botocore.session
        from botocore.config import Config

        client_kwargs = self.options.get("client_kwargs", {})
        checksums = {k: v for k, v in self.options.get("config_kwargs", {}).items() if k in S3_CHECKSUM_CONFIG}
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=client_kwargs.get("endpoint_url"), region_name=client_kwargs.get("region_name", "us-east-1"),
            aws_access_key_id=self.options.get("key"), aws_secret_access_key=self.options.get("secret"),
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **checksums),
        )  # fmt: skip

    def invalidate(self) -> None:
        """Forget listings cached by the filesystem (needed when polling for uploads)."""
        self.fs.invalidate_cache()

    # ------------------------------------------------------------ bytes
    def exists(self, key: str) -> bool:
        with _backend_errors(self.uri(key)):
            return bool(self.fs.exists(self.path(key)))

    def size(self, key: str) -> int:
        with _backend_errors(self.uri(key)):
            return int(self.fs.size(self.path(key)))

    def version(self, key: str) -> Version:
        """Size, last modified and tag of one object (see Version)."""
        with _backend_errors(self.uri(key)):
            return Version.of(self.fs.info(self.path(key)))

    def versions(self, prefix: str) -> dict[str, Version]:
        """The Version of every key directly under `prefix`, from one listing (one LIST
        request on S3, however many objects)."""
        self.invalidate()
        try:
            with _backend_errors(self.uri(prefix)):
                entries = self.fs.ls(self.path(prefix), detail=True)
        except FileNotFoundError:
            return {}
        files = ((e["name"].rstrip("/").rsplit("/", 1)[-1], e) for e in entries if e["type"] == "file")
        return {f"{prefix}/{n}": Version.of(e) for n, e in sorted(files, key=lambda f: f[0]) if not n.startswith(".")}

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; with max_bytes, StoreError for a larger object, and never more
        than max_bytes + 1 read (the object may have grown since it was listed)."""
        path = self.path(key)
        try:
            with _backend_errors(self.uri(key)):
                if max_bytes is None:
                    return self.fs.cat_file(path)
                data = self._cat_range(path, max_bytes + 1)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)}: no such object in the store") from None
        if len(data) > max_bytes:
            raise StoreError(f"{self.uri(key)}: larger than the {max_bytes}-byte limit")
        return data

    def _cat_range(self, path: str, end: int) -> bytes:
        """Bytes [0, end) of the object. S3 refuses any range of a 0-byte object
        (InvalidRange, 416): an empty object reads as b"", not as an unavailable store."""
        try:
            return self.fs.cat_file(path, start=0, end=end)
        except OSError as err:
            if "InvalidRange" in str(err) and self.fs.size(path) == 0:
                return b""
            raise

    def write_bytes(self, key: str, data: bytes, overwrite: bool = True) -> None:
        """Write whole-object; with overwrite=False an existing object is kept and
        FileExistsError raised: atomically on a local store (a hard link never replaces)
        and on S3 servers that honour `If-None-Match: *` (AWS); rclone ignores it, so
        there the check before the PUT is all there is. Local writes go to a temporary
        name first and are renamed, so a reader never sees half an object."""
        path = self.path(key)
        if not overwrite and self.exists(key):
            raise FileExistsError(f"{self.uri(key)} already exists; not overwritten")
        with _backend_errors(self.uri(key)):
            try:
                self._write(path, data, create=not overwrite)
            except FileExistsError:
                raise FileExistsError(f"{self.uri(key)} already exists; not overwritten") from None

    def _write(self, path: str, data: bytes, create: bool = False) -> None:
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            self.fs.pipe_file(tmp, data)
            if create:
                try:
                    os.link(tmp, path)  # fails if `path` exists: create-only, atomically
                finally:
                    os.unlink(tmp)
            else:
                self.fs.mv(tmp, path)
        elif create:
            try:
                self.fs.pipe_file(path, data, mode="create")  # an object PUT is atomic on S3
            except Exception as err:
                if "PreconditionFailed" in str(err) or "412" in str(err):
                    raise FileExistsError(path) from None
                raise
        else:
            self.fs.pipe_file(path, data)

    def delete(self, key: str) -> bool:
        """Remove one object; False when there was none."""
        with _backend_errors(self.uri(key)):
            if not self.fs.exists(self.path(key)):
                return False
            self.fs.rm_file(self.path(key))
            return True

    def list(self, prefix: str) -> list[str]:
        """Keys directly under `prefix` (files only, sorted); [] when there are none."""
        return list(self.versions(prefix))

    # ------------------------------------------------------------ typed
    def write_json(self, key: str, obj: Any, overwrite: bool = True) -> None:
        self.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), overwrite)

    def read_json(self, key: str, max_bytes: int = 16 * 1024 * 1024) -> Any:
        data = self.read_bytes(key, max_bytes)
        if not data.strip():
            raise StoreError(f"{self.uri(key)}: empty object, not valid JSON")
        try:
            return json.loads(data)
        except ValueError as err:  # JSONDecodeError, invalid UTF-8, an integer of over 4300 digits
            raise StoreError(f"{self.uri(key)}: not valid JSON ({type(err).__name__}: {err})") from None
        except RecursionError:
            raise StoreError(f"{self.uri(key)}: not valid JSON (nested deeper than the parser allows)") from None

    def write_npy(self, key: str, array: np.ndarray, overwrite: bool = True) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        self.write_bytes(key, buf.getvalue(), overwrite)

    def read_npy(self, key: str) -> np.ndarray:
        data = self.read_bytes(key)  # its errors say whether the store or the object is missing
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # pickled, truncated, empty or not .npy at all
            raise StoreError(f"{self.uri(key)}: not a plain .npy array ({len(data)} bytes; {err or type(err).__name__})") from None
