"""Moving bytes to and from a URL the device was given: file:// (same machine) or a
pre-signed http(s) URL. Standard library only: the device needs no cloud SDK.

A device's answer must survive an outage: `put_until` sends the same bytes again after
anything transient (connection refused or reset, a timeout, HTTP 408/429/5xx), with
capped exponential backoff and jitter, until the pre-signed URL expires; a final refusal
(any other 4xx: a bad signature, an expired URL) stops at once. Re-sending is safe
because a PUT of identical bytes is idempotent."""

from __future__ import annotations

import http.client
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlparse

from ecos_core.storage.private_file import write_private

RETRY_STATUS = frozenset({408, 429})  # and every 5xx: the server's trouble, not the request's


class TransportError(RuntimeError):
    """The URL could not be read or written; the message says why (without the signature)."""

    retryable = False
    retry_after_s: float | None = None  # a 429/503's Retry-After, when it gave one


class Unreachable(TransportError):
    """A transient failure (no connection, a timeout, 408/429/5xx): the same request may succeed later."""

    retryable = True


class Refused(TransportError):
    """The server refused the request for good (a 4xx such as a bad signature or an expired URL)."""


class DeadlinePassed(TransportError):
    """Transient failures lasted until the URL's expiry: nothing more can be sent there."""


# One retry notice: (attempt just failed, seconds until the next one, why it failed).
RetryHook = Callable[[int, float, str], None]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits between half and all of
    min(cap_s, first_s * 2**n), so devices that failed together do not retry together."""

    first_s: float = 0.5
    cap_s: float = 10.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        ceiling = min(self.cap_s, self.first_s * 2 ** min(attempt, 30))
        jittered = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret
        return min(self.cap_s, max(jittered, retry_after_s or 0.0))  # a server's Retry-After, within the cap


def public(url: str) -> str:
    return url.split("?", 1)[0]  # never print a pre-signed URL's signature


_public = public  # the name other modules used before


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


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return max(0.0, float(err.headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: the backoff decides


def _http_error(url: str, err: urllib.error.HTTPError) -> TransportError:
    line = f"{public(url)}: HTTP {err.code} {err.reason}{_s3_reason(err)}"
    if err.code in RETRY_STATUS or err.code >= 500:
        failure = Unreachable(line)
        failure.retry_after_s = _retry_after(err)
        return failure
    return Refused(line)


def _one_line(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err  # URLError wraps the socket's error
    return " ".join(str(reason).split()) or type(reason).__name__


def _http(url: str, request: urllib.request.Request | str, timeout_s: float, max_bytes: int = 0) -> bytes:
    """One request; TransportError subclasses say whether trying again can help."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 (scheme checked)
            return resp.read(max_bytes + 1) if max_bytes else b""
    except urllib.error.HTTPError as err:
        raise _http_error(url, err) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:  # refused, reset, timeout, DNS
        raise Unreachable(f"{public(url)}: unreachable ({_one_line(err)})") from None


def with_retries(
    url: str,
    attempt: Callable[[float], bytes],
    until: datetime | None,
    timeout_s: float = 30.0,
    backoff: Backoff = Backoff(),
    max_attempts: int | None = None,
    on_retry: RetryHook | None = None,
) -> tuple[bytes, int]:
    """attempt(timeout) again after each transient failure, until it succeeds, `until`
    passes (DeadlinePassed) or max_attempts are spent (the last failure). A final
    failure is raised at once. Returns the result and the number of attempts."""
    n, last = 0, ""
    while True:
        remaining = None if until is None else (until - datetime.now(timezone.utc)).total_seconds()
        if remaining is not None and remaining <= 0 and n:  # the first attempt is always made
            raise DeadlinePassed(f"{last}; gave up after {n} attempts: the URL expired at the deadline "
                                 f"{until.isoformat() if until else ''}")  # fmt: skip
        n += 1
        try:
            # never wait on one attempt past the URL's expiry (at least a second: a connect takes time)
            return attempt(timeout_s if remaining is None else max(1.0, min(timeout_s, remaining))), n
        except TransportError as err:
            if not err.retryable or (max_attempts is not None and n >= max_attempts):
                raise
            last = str(err)
            delay = backoff.delay(n - 1, err.retry_after_s)
            if until is not None:  # a last try just before the expiry rather than a wait past it
                left = (until - datetime.now(timezone.utc)).total_seconds()
                delay = min(delay, max(0.2, left - 1.0)) if left > 0 else 0.0
            if on_retry is not None:
                on_retry(n, delay, last)
            _sleep(delay)


def _sleep(seconds: float) -> None:
    """Sleep in short slices: Ctrl-C (KeyboardInterrupt) stops a long backoff within a
    quarter second, even when the signal reached another thread first."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.25, left))


def fetch(url: str, max_bytes: int, timeout_s: float = 30.0, until: datetime | None = None,
          backoff: Backoff = Backoff(), on_retry: RetryHook | None = None) -> bytes:  # fmt: skip
    """The bytes at `url` (at most max_bytes). With `until`, transient failures are retried until then."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            with open(parsed.path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise TransportError(f"{url}: not found") from None
    elif parsed.scheme in ("http", "https"):
        get = lambda timeout: _http(url, url, timeout, max_bytes)  # noqa: E731
        data, _ = with_retries(url, get, until, timeout_s, backoff, None if until else 1, on_retry)
    else:
        raise TransportError(f"{public(url)}: unsupported scheme {parsed.scheme!r}")
    if len(data) > max_bytes:
        raise TransportError(f"{public(url)}: larger than the {max_bytes}-byte limit")
    return data


def _put_file(path: str, data: bytes) -> None:
    """Create the file whole (a reader never sees half of it, and its temporary name is a dot
    name, never listed as an upload); the same bytes again are a success (a re-send),
    different bytes a refusal (a second answer)."""
    try:
        write_private(path, data, exclusive=True)  # a link: never replaces an answer
    except FileExistsError:
        with open(path, "rb") as fh:
            if fh.read(len(data) + 1) == data:
                return
        raise Refused(f"file://{path}: already uploaded with different bytes; not overwritten") from None


def put_until(
    url: str,
    data: bytes,
    until: datetime | None,
    timeout_s: float = 30.0,
    backoff: Backoff = Backoff(),
    max_attempts: int | None = None,
    on_retry: RetryHook | None = None,
) -> int:
    """Upload `data`, sending the same bytes again after each transient failure until it
    lands, `until` (the URL's expiry) passes, or max_attempts are spent. Returns the
    number of attempts."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        _put_file(parsed.path, data)
        return 1
    if parsed.scheme not in ("http", "https"):
        raise TransportError(f"{public(url)}: unsupported scheme {parsed.scheme!r}")
    headers = {"Content-Type": "application/json"}

    def send(timeout: float) -> bytes:
        return _http(url, urllib.request.Request(url, data=data, method="PUT", headers=headers), timeout)

    return with_retries(url, send, until, timeout_s, backoff, max_attempts, on_retry)[1]


def put(url: str, data: bytes, timeout_s: float = 30.0, retries: int = 2) -> None:
    """Upload with a few quick retries of transient failures (no deadline): for callers
    that hold no invitation. A device answering a round uses put_until."""
    put_until(url, data, None, timeout_s, Backoff(0.5, 2.0), retries + 1)
