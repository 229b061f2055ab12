"""Moving bytes to and from a URL the device was given: file:// (same machine) or a
pre-signed http(s) URL. Standard library only: the device needs no cloud SDK."""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse


class TransportError(RuntimeError):
    """The URL could not be read or written; the message says why (without the signature)."""


def _public(url: str) -> str:
    return url.split("?", 1)[0]  # never print a pre-signed URL's signature


def _s3_reason(err: urllib.error.HTTPError) -> str:
    """The S3 error code and message of a refused request, with a hint for expiry
    (rclone answers an expired pre-signed URL with 400 AccessDenied, AWS with 403)."""
    try:
        body = err.read(4096).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only a hint
        return ""
    code = re.search(r"<Code>(.*?)</Code>", body)
    message = re.search(r"<Message>(.*?)</Message>", body)
    text = f": {code.group(1) if code else ''} {message.group(1) if message else ''}".rstrip()
    expired = "expired" in body.lower() or "request time" in body.lower()
    return text + (" (the pre-signed URL expired: the round's deadline has passed)" if expired else "")


def fetch(url: str, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            with open(parsed.path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise TransportError(f"{url}: not found") from None
    elif parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (scheme checked)
                data = resp.read(max_bytes + 1)
        except urllib.error.HTTPError as err:
            raise TransportError(f"{_public(url)}: HTTP {err.code} {err.reason}{_s3_reason(err)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise TransportError(f"{_public(url)}: unreachable ({err})") from None
    else:
        raise TransportError(f"{_public(url)}: unsupported scheme {parsed.scheme!r}")
    if len(data) > max_bytes:
        raise TransportError(f"{_public(url)}: larger than the {max_bytes}-byte limit")
    return data


def put(url: str, data: bytes, timeout_s: float = 30.0, retries: int = 2) -> None:
    """Upload once (a 5xx is retried: a PUT of the same bytes is idempotent). A local
    file is created exclusively (a second answer is refused)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        os.makedirs(os.path.dirname(parsed.path), exist_ok=True)
        try:
            fd = os.open(parsed.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise TransportError(f"{url}: already uploaded; not overwritten") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return
    if parsed.scheme not in ("http", "https"):
        raise TransportError(f"{_public(url)}: unsupported scheme {parsed.scheme!r}")
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/json"})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 (scheme checked)
                return
        except urllib.error.HTTPError as err:
            if err.code >= 500 and attempt < retries:  # the server's trouble, not ours: the same PUT again
                time.sleep(0.5 * 2**attempt)
                continue
            raise TransportError(f"{_public(url)}: HTTP {err.code} {err.reason}{_s3_reason(err)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise TransportError(f"{_public(url)}: unreachable ({err})") from None
