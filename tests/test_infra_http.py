"""infra's JSON requests to the Prefect API retry what Prefect's own client retries.

The CI smoke once failed on a single 503 from `create_flow_run`: Prefect's server answers
503 ("Service Unavailable") when its SQLite database is locked by another writer. These
tests run a real HTTP server on a free port that answers a scripted list of codes.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from infra.processes import _http


class _Scripted(http.server.BaseHTTPRequestHandler):
    codes: list[int] = []
    bodies: list[bytes] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.rfile.read(length))
        code = type(self).codes.pop(0) if type(self).codes else 200
        payload = json.dumps({"code": code}).encode()
        self.send_response(code)
        if code == 429:
            self.send_header("Retry-After", "0")  # honoured: no backoff wait
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    _Scripted.codes, _Scripted.bodies = [], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_unavailable_is_retried_with_the_same_body(server):
    _Scripted.codes = [503, 503, 429]
    status, payload = _http(f"{server}/deployments/x/create_flow_run", "POST", {"parameters": {"a": 1}}, retries=3)
    assert status == 200 and json.loads(payload) == {"code": 200}
    assert len(_Scripted.bodies) == 4
    assert {json.loads(b)["parameters"]["a"] for b in _Scripted.bodies} == {1}


@pytest.mark.parametrize("code", [400, 404, 409, 422, 500])
def test_other_errors_answer_at_once(server, code):
    _Scripted.codes = [code, 200]
    assert _http(f"{server}/flow_runs/x", retries=3)[0] == code
    assert len(_Scripted.bodies) == 1


def test_gives_up_after_its_retries(server):
    _Scripted.codes = [503] * 10
    assert _http(f"{server}/health", retries=1)[0] == 503
    assert len(_Scripted.bodies) == 2
    assert _http(f"{server}/health", retries=0)[0] == 503
    assert len(_Scripted.bodies) == 3


def test_retry_after_is_honoured(server):
    import time

    _Scripted.codes = [429] * 4
    start = time.monotonic()
    assert _http(f"{server}/x", retries=4)[0] == 200 and len(_Scripted.bodies) == 5
    assert time.monotonic() - start < 3.0  # the backoff alone would wait 0.5+1+2+4 s
