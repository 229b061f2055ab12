"""A device's upload survives transient failures and stops at final ones (issue 16, item 5).

A real HTTP server on a free port (http.server, in a thread) plays a scripted sequence of
answers: 503, 429, a reset connection, a request left hanging, 403, an expired URL.
The device code under test is the real one (transport.put_until and client.respond)."""

from __future__ import annotations

import _thread
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ecos_core.exchange import transport
from ecos_core.exchange.client import respond
from ecos_core.privacy.ledger import PrivacyLedger
from ecos_core.storage import layout
from ecos_core.storage.store import Store
from ecos_core.exchange.auth import enroll
from tests.conftest import make_imageset
from tests.test_client import publish

FAST = transport.Backoff(0.05, 0.2)  # the real schedule (0.5 s doubling to 10 s) is too slow for unit tests
SIGNED = "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=" + "ab" * 32
EXPIRED = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
FORGED = b"<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match</Message></Error>"


@dataclass
class Script:
    """What the server answers, one step per request; the last step repeats."""

    steps: list[tuple]
    bodies: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def next(self) -> tuple:
        return self.steps[min(len(self.bodies) - 1, len(self.steps) - 1)]


class _Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *_a) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.do_PUT()

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.script.bodies.append(body)
        self.script.times.append(time.monotonic())
        kind, *args = self.script.next()
        if kind == "reset":  # RST instead of an answer: the client sees "connection reset by peer"
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if kind == "hang":  # longer than the client's timeout
            time.sleep(args[0])
            kind, args = "status", [200]
        code, headers, payload = args[0], (args[1] if len(args) > 1 else {}), (args[2] if len(args) > 2 else b"")
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, *_a) -> None:  # a reset connection is the point, not an error
        pass


@pytest.fixture
def server() -> Iterator:
    """Start a scripted server on a free port: serve(steps) returns (url with a fake signature, script)."""
    running: list[_Server] = []

    def serve(steps: list[tuple]) -> tuple[str, Script]:
        script = Script(steps)
        httpd = _Server(("127.0.0.1", 0), type("H", (_Handler,), {"script": script}))
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        running.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/ecos/rounds/r1/responses/c1.json{SIGNED}", script

    yield serve
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


def soon(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


# ---------------------------------------------------------------- transport
def test_transient_failures_are_retried_with_the_same_bytes_until_the_upload_lands(server):
    url, script = server([("status", 503), ("status", 429, {"Retry-After": "0"}), ("reset",), ("hang", 1.5),
                          ("status", 500), ("status", 408), ("status", 200)])  # fmt: skip
    notices = []
    attempts = transport.put_until(url, b"the kept answer", soon(30), timeout_s=0.5, backoff=FAST,
                                   on_retry=lambda *a: notices.append(a))  # fmt: skip
    assert attempts == 7 and script.bodies == [b"the kept answer"] * 7
    assert [n for n, _, _ in notices] == [1, 2, 3, 4, 5, 6]
    assert "HTTP 503" in notices[0][2] and "HTTP 429" in notices[1][2] and "unreachable" in notices[2][2]
    assert all("X-Amz-Signature" not in reason for _, _, reason in notices)  # never the signature


def test_backoff_grows_and_is_capped():
    backoff = transport.Backoff(0.5, 10.0)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (5, 10.0), (60, 10.0)):
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1  # jitter: devices that failed together do not retry together
    assert backoff.delay(0, retry_after_s=3.0) == 3.0 and backoff.delay(0, retry_after_s=99.0) == 10.0


@pytest.mark.parametrize(("code", "body", "hint"), [(403, FORGED, "SignatureDoesNotMatch"),
                                                    (400, EXPIRED, "the pre-signed URL expired"),
                                                    (404, b"", "HTTP 404")])  # fmt: skip
def test_a_final_refusal_is_not_retried(server, code, body, hint):
    url, script = server([("status", code, {}, body), ("status", 200)])
    start = time.monotonic()
    with pytest.raises(transport.Refused) as err:
        transport.put_until(url, b"answer", soon(30), backoff=FAST, on_retry=lambda *a: pytest.fail(f"retried: {a}"))
    assert len(script.bodies) == 1 and time.monotonic() - start < 5.0  # no backoff wait (30 s here)
    line = str(err.value)
    assert hint in line and "\n" not in line and "X-Amz-Signature" not in line and f"HTTP {code}" in line


def test_retrying_stops_when_the_url_expires(server):
    url, script = server([("status", 503)])
    until = soon(1.5)
    with pytest.raises(transport.DeadlinePassed, match=r"HTTP 503 .*gave up after \d+ attempts: the URL expired at "
                                                       r"the deadline"):  # fmt: skip
        transport.put_until(url, b"answer", until, backoff=transport.Backoff(0.2, 0.4))
    over = (datetime.now(timezone.utc) - until).total_seconds()
    assert 0 <= over < 3.0, over  # neither gives up early nor hangs on past the expiry
    assert len(script.bodies) >= 3


def test_ctrl_c_during_backoff_stops_within_a_second(server):
    url, script = server([("status", 503)])
    threading.Timer(0.5, _thread.interrupt_main).start()  # what Ctrl-C does to the main thread
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        transport.put_until(url, b"answer", soon(60), backoff=transport.Backoff(30.0, 30.0))
    assert time.monotonic() - start < 5.0 and len(script.bodies) == 1  # the backoff was 30 s


def test_a_plain_put_retries_a_refused_connection_a_few_times():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notices = []
    with pytest.raises(transport.Unreachable, match=rf"http://127.0.0.1:{port}/x: unreachable \(.*refused"):
        transport.put_until(f"http://127.0.0.1:{port}/x", b"a", None, backoff=FAST, max_attempts=3,
                            on_retry=lambda *a: notices.append(a))  # fmt: skip
    assert len(notices) == 2


def test_a_probe_download_waits_out_an_outage_until_the_deadline(server):
    url, script = server([("status", 503), ("reset",), ("status", 200, {}, b"probe")])
    assert transport.fetch(url, 100, until=soon(30), backoff=FAST) == b"probe" and len(script.bodies) == 3
    url, script = server([("status", 503)])
    with pytest.raises(transport.Unreachable, match="HTTP 503"):  # without a deadline: one try, as before
        transport.fetch(url, 100)
    assert len(script.bodies) == 1


# ---------------------------------------------------------------- the kept answer
def test_two_runs_racing_on_one_round_keep_one_answer(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    first = ledger.keep("r1", "c1", 6.1, 1e-5, soon(60), b'{"first": 1}')
    second = ledger.keep("r1", "c1", 6.1, 1e-5, soon(60), b'{"second": 2}')  # another run's fresh noise: dropped
    assert second == first and ledger.kept("r1").signed() == b'{"first": 1}'
    assert ledger.mark_sent("r1").sent_at is not None and ledger.kept("r1").signed() == b'{"first": 1}'
    assert not ledger.path.exists()  # keeping spends nothing; the caller records ε


def test_an_unreadable_kept_answer_is_an_error_not_a_reason_to_answer_again(device):
    store, enrollment, ledger = device
    ledger.kept_dir.mkdir(parents=True)
    ledger.kept_path("r1").write_bytes(b'{"version": 1, "round_id": "r1"')
    with pytest.raises(ValueError, match=r"^kept response .*ledger.responses/r1.json: unreadable .*answering again would "
                                         r"release new noise\)$"):  # fmt: skip
        respond(publish(store, enrollment), enrollment, make_imageset(4).images, ledger, show_bar=False)
    assert not store.exists(layout.response("r1", "c1")) and ledger.entries() == []


# ---------------------------------------------------------------- the device
@pytest.fixture
def device(tmp_path):
    store = Store(str(tmp_path / "store"))
    enrollment = enroll(store, "c1")
    return store, enrollment, PrivacyLedger(tmp_path / "device" / "ledger.json")


def test_device_retries_through_an_outage_and_sends_its_answer_once(device, server):
    store, enrollment, ledger = device
    url, script = server([("reset",), ("status", 503), ("status", 200)])
    invitation = publish(store, enrollment).model_copy(update={"response_url": url})
    answer = respond(invitation, enrollment, make_imageset(10).images, ledger, seed=0, show_bar=False, backoff=FAST)
    assert answer.outcome == "sent" and answer.attempts == 3
    assert script.bodies == [answer.wire] * 3 and ledger.kept("r1").signed() == answer.wire
    assert ledger.kept("r1").sent_at is not None and [e.round_id for e in ledger.entries()] == ["r1"]
    again = respond(invitation, enrollment, make_imageset(10).images, ledger, seed=1, show_bar=False, backoff=FAST)
    assert again.outcome == "delivered before" and len(script.bodies) == 3  # nothing sent a second time


def test_device_refused_keeps_its_answer_and_a_rerun_resends_the_same_bytes(device, server):
    store, enrollment, ledger = device
    url, script = server([("status", 403, {}, FORGED)])
    invitation = publish(store, enrollment).model_copy(update={"response_url": url})
    with pytest.raises(transport.Refused, match=r"SignatureDoesNotMatch.*; refused, not retried; round r1's answer "
                                                r"stays kept at .*ledger.responses/r1.json$"):  # fmt: skip
        respond(invitation, enrollment, make_imageset(10).images, ledger, seed=0, show_bar=False, backoff=FAST)
    assert len(script.bodies) == 1
    kept = ledger.kept("r1")
    assert kept.sent_at is None and kept.signed() == script.bodies[0]
    spent = ledger.spent(1e-5)
    url2, script2 = server([("status", 503), ("status", 200)])  # the operator fixed the URL; the server is busy
    later = invitation.model_copy(update={"response_url": url2})
    again = respond(later, enrollment, make_imageset(10).images, ledger, seed=1, show_bar=False, backoff=FAST)
    assert again.outcome == "resent" and script2.bodies == [script.bodies[0]] * 2  # byte-identical, no new noise
    assert ledger.spent(1e-5) == spent and [e.round_id for e in ledger.entries()] == ["r1"]  # ε spent once
    assert ledger.kept("r1").sent_at is not None


def test_device_gives_up_at_the_deadline_and_keeps_its_answer(device, server):
    store, enrollment, ledger = device
    url, script = server([("status", 503)])
    invitation = publish(store, enrollment, deadline_s=4).model_copy(update={"response_url": url})
    with pytest.raises(transport.DeadlinePassed) as err:
        respond(invitation, enrollment, make_imageset(10).images, ledger, seed=0, show_bar=False, backoff=FAST)
    line = str(err.value)
    assert "\n" not in line and "X-Amz-Signature" not in line and "the URL expired at the deadline" in line
    assert line.endswith(f"round r1's answer stays kept at {ledger.kept_path('r1')}")
    assert datetime.now(timezone.utc) - invitation.deadline < timedelta(seconds=1.5)
    n = len(script.bodies)
    assert n >= 2 and len(set(script.bodies)) == 1 and ledger.kept("r1").sent_at is None
    with pytest.raises(ValueError, match=r"deadline .* has passed; its answer stays kept at .*r1.json, never delivered"):
        respond(invitation, enrollment, make_imageset(10).images, ledger, seed=1, show_bar=False, backoff=FAST)
    assert len(script.bodies) == n and [e.round_id for e in ledger.entries()] == ["r1"]
