"""A device's answer survives an S3 outage (issue 16, item 5), against the REAL S3 server
(rclone serve s3, started on a free port by tests/s3_faults.py's fixture, stopped and
restarted by PID on the same port and data folder).

The outage starts at a precise point, right after the device computed its answer and
before its upload, by wrapping `answer_probe` (no part of S3 is mocked): the device keeps
the signed answer, records ε once, and retries the same bytes until the server is back
or the pre-signed URL expires; a re-run of `ecos client respond` re-sends the kept bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from s3_faults import _s3_running, s3, store_url  # noqa: F401 (fixtures are found by name)
from infra import services
from ecos_core.storage import layout
from ecos_core.exchange import client, transport
from ecos_core.exchange.auth import enroll, save_enrollment
from ecos_core.data.npz import save_imageset
from ecos_core.privacy.ledger import PrivacyLedger
from tasks import catalog
from tests.conftest import make_imageset
from tests.test_client import publish

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bucket(store_url):  # noqa: F811
    store = catalog.store(store_url)
    return store, enroll(store, "c1", 50.0)


@pytest.fixture
def home(tmp_path, bucket) -> Path:
    """The device's own folder: enrollment, data, ledger (its answers are kept beside it)."""
    save_enrollment(bucket[1], tmp_path / "enrollment.json")
    save_imageset(make_imageset(20), tmp_path / "data.npz")
    return tmp_path


def outage_after_answering(monkeypatch, s3, down_s: float | None) -> dict:  # noqa: F811
    """Stop S3 once the device has its answer; start it again `down_s` later (None: not in this test)."""
    real, seen = client.answer_probe, {}

    def answer_then_outage(*args, **kwargs):
        out = real(*args, **kwargs)
        services.stop("s3", s3)
        seen["down"] = time.monotonic()
        if down_s is not None:
            def restart() -> None:
                time.sleep(down_s)
                services.start("s3", s3)
                seen["up"] = time.monotonic()

            seen["thread"] = threading.Thread(target=restart, daemon=True)
            seen["thread"].start()
        return out

    monkeypatch.setattr(client, "answer_probe", answer_then_outage)
    return seen


def cli(home: Path, rid: str, *extra: str, data: str | None = None, **popen) -> list[str]:
    args = [sys.executable, "-m", "ecos_cli", "client", "respond", "--invite", str(home / f"{rid}.json"),
            "--enrollment", str(home / "enrollment.json"), "--ledger", str(home / "ledger.json"),
            "--data", data or str(home / "data.npz"), "--no-progress", *extra]  # fmt: skip
    return args


def test_an_upload_during_an_s3_outage_lands_when_the_server_is_back(s3, bucket, home, monkeypatch):  # noqa: F811
    store, enrollment = bucket
    rid = f"dev-outage-{uuid.uuid4().hex[:6]}"
    invitation = publish(store, enrollment, rid, deadline_s=120)
    ledger, notices = PrivacyLedger(home / "ledger.json"), []
    seen = outage_after_answering(monkeypatch, s3, down_s=6.0)
    try:
        answer = client.respond(invitation, enrollment, make_imageset(20).images, ledger, seed=0, show_bar=False,
                                on_retry=lambda *a: notices.append(a))  # fmt: skip
    finally:
        if "thread" in seen:
            seen["thread"].join()
    landed = time.monotonic()
    assert "up" in seen and landed >= seen["up"], "the upload landed while the server was down?"
    assert landed - seen["up"] < 12.0  # the backoff is capped at 10 s (+ jitter within it)
    assert len(notices) >= 2 and all("unreachable" in r and "X-Amz-Signature" not in r for _, _, r in notices)
    assert answer.outcome == "sent" and answer.attempts == len(notices) + 1
    assert store.read_bytes(layout.response(rid, "c1")) == answer.wire == ledger.kept(rid).signed()
    assert ledger.kept(rid).sent_at is not None
    assert [e.round_id for e in ledger.entries()] == [rid]  # ε spent once


def test_cli_interrupted_during_an_outage_resends_the_same_bytes_on_a_rerun(s3, bucket, home):  # noqa: F811
    """Ctrl-C while the device waits out an outage: it stops within a second and keeps the
    answer; after the server is back, the same command re-sends the kept bytes (it loads no
    data: --data points nowhere), and a third run says the answer was delivered."""
    store, enrollment = bucket
    rid = f"dev-cli-{uuid.uuid4().hex[:6]}"
    (home / f"{rid}.json").write_text(publish(store, enrollment, rid, deadline_s=180).model_dump_json())
    mark, go, err_path = home / "answered", home / "go", home / "first.err"
    pause = ("import os, sys, time\nimport ecos_core.exchange.client as c\nreal = c.answer_probe\n"
             "def paused(*a, **k):\n    out = real(*a, **k)\n    open(os.environ['MARK'], 'w').close()\n"
             "    while not os.path.exists(os.environ['GO']):\n        time.sleep(0.05)\n    return out\n"
             "c.answer_probe = paused\nsys.argv = ['ecos', *sys.argv[1:]]\nfrom ecos_cli.main import main\nmain()\n")  # fmt: skip
    args = cli(home, rid, "--seed", "3")
    env = dict(os.environ, MARK=str(mark), GO=str(go))
    with open(err_path, "wb") as err:
        first = subprocess.Popen([sys.executable, "-c", pause, *args[3:]], stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        wait_for(mark.exists, 120, "the first run computed its answer")
        services.stop("s3", s3)  # the outage begins just before the upload
        go.touch()
        wait_for(lambda: "upload attempt 2 failed" in err_path.read_text() or first.poll() is not None, 60,
                 "the device retries")  # fmt: skip
        assert first.poll() is None, f"the device gave up: {err_path.read_text()[-600:]}"
        start = time.monotonic()
        first.send_signal(signal.SIGINT)
        first.wait(10)
        stopped_s = time.monotonic() - start
    finally:
        if first.poll() is None:
            first.kill()
        services.start("s3", s3)
    said = err_path.read_text().strip().splitlines()
    # within seconds (the standard), with room for the interpreter's exit on a loaded CI machine
    assert first.returncode == 130 and stopped_s < 5.0, (first.returncode, stopped_s, said[-3:])
    ledger = PrivacyLedger(home / "ledger.json")
    kept = ledger.kept(rid)
    assert said[-1] == f"interrupted: round {rid} not delivered; its answer is kept at {ledger.kept_path(rid)}; run " \
                       "the same command again to send it"  # fmt: skip
    assert kept.sent_at is None and not store.exists(layout.response(rid, "c1"))
    recorded = ledger.entries()
    assert [e.round_id for e in recorded] == [rid]

    again = subprocess.run(cli(home, rid, data=str(home / "gone.npz")), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"round {rid} was answered before; re-sent the kept answer" in again.stdout
    assert "not recomputed: no new noise, ε not spent again" in again.stdout
    assert store.read_bytes(layout.response(rid, "c1")) == kept.signed()  # byte-identical
    assert ledger.entries() == recorded  # ε recorded once, before the first try
    assert ledger.kept(rid).sent_at is not None

    third = subprocess.run(cli(home, rid, data=str(home / "gone.npz")), capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and f"round {rid} was already answered and delivered" in third.stdout, third.stderr
    assert "nothing sent" in third.stdout and ledger.entries() == recorded


def test_the_url_expires_during_an_outage_the_answer_stays_kept(s3, bucket, home, monkeypatch):  # noqa: F811
    store, enrollment = bucket
    rid = f"dev-expiry-{uuid.uuid4().hex[:6]}"
    invitation = publish(store, enrollment, rid, deadline_s=8)
    (home / f"{rid}.json").write_text(invitation.model_dump_json())
    ledger = PrivacyLedger(home / "ledger.json")
    outage_after_answering(monkeypatch, s3, down_s=None)
    try:
        with pytest.raises(transport.DeadlinePassed) as err:
            client.respond(invitation, enrollment, make_imageset(20).images, ledger, seed=0, show_bar=False)
    finally:
        services.start("s3", s3)
    line = str(err.value)
    assert "\n" not in line and "X-Amz-Signature" not in line and "unreachable" in line
    assert "the URL expired at the deadline" in line and line.endswith(f"stays kept at {ledger.kept_path(rid)}")
    kept = ledger.kept(rid)
    assert kept.sent_at is None and [e.round_id for e in ledger.entries()] == [rid]
    # the server itself refuses the expired URL: a final 4xx, sent once, not retried
    with pytest.raises(transport.Refused, match="the pre-signed URL expired"):
        transport.put_until(invitation.response_url, kept.signed(), None, on_retry=lambda *a: pytest.fail(f"{a}"))
    rerun = subprocess.run(cli(home, rid), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 2 and len(rerun.stderr.strip().splitlines()) == 1, rerun.stderr
    assert "has passed; its answer stays kept at" in rerun.stderr and "never delivered" in rerun.stderr
    assert not store.exists(layout.response(rid, "c1")) and ledger.entries()[0].round_id == rid


def test_a_refused_signature_is_not_retried_and_the_rerun_resends(s3, bucket, home):  # noqa: F811
    store, enrollment = bucket
    rid = f"dev-forged-{uuid.uuid4().hex[:6]}"
    invitation = publish(store, enrollment, rid, deadline_s=120)
    url = invitation.response_url
    sig = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    forged = url[:sig] + ("0" if url[sig] != "0" else "1") + url[sig + 1 :]  # one hex digit of the signature
    broken = invitation.model_copy(update={"response_url": forged})
    ledger = PrivacyLedger(home / "ledger.json")
    start = time.monotonic()
    with pytest.raises(transport.Refused, match=r"HTTP 403 .*SignatureDoesNotMatch.*; refused, not retried; round "):
        client.respond(broken, enrollment, make_imageset(20).images, ledger, seed=0, show_bar=False,
                       on_retry=lambda *a: pytest.fail(f"retried: {a}"))  # fmt: skip
    assert not store.exists(layout.response(rid, "c1"))
    kept = ledger.kept(rid)
    again = client.respond(invitation, enrollment, make_imageset(20).images, ledger, seed=1, show_bar=False)
    assert again.outcome == "resent" and store.read_bytes(layout.response(rid, "c1")) == kept.signed()
    assert [e.round_id for e in ledger.entries()] == [rid] and time.monotonic() - start < 30


def wait_for(condition, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)
