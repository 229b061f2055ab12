"""Shared by the fault tests against the REAL S3 server (tests/test_faults_s3_*.py):
the server fixture (rclone serve s3, started by infra.services on a free port in a
temporary run dir, stopped by PID at the end, also when a test fails), the round
config, enrolled devices, and helpers that sign and read responses."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402
from infra.processes import free_port as _free_port  # noqa: E402

from ecos_core.exchange.auth import enroll, save_enrollment, signed_response_bytes  # noqa: E402
from ecos_core.config import RoundConfig  # noqa: E402
from ecos_core.exchange.protocol import response_json_bytes  # noqa: E402
from tasks import catalog  # noqa: E402



K = 8
SIGMA = 6.1
ROUND = RoundConfig.model_validate(
    {
        "data": {"domain_sizes": {"mnist": 200, "mnistm": 200, "synth": 200, "animal": 200}, "n_client_train": 80,
                 "n_client_test": 80},
        "index": {"k": K, "niter": 10, "nredo": 1, "batch_size": 128, "adapted_steps": 10},
        "sampling": {"budget": 60, "samplers": ("ecos", "random")},
        "train": {"max_epochs": 2, "max_steps": 10, "batch_size": 32},
        "clients": ("client-0", "client-1"),
        "quorum": 2,
        "sigma": SIGMA,
        "deadline_s": 120,
        "poll_s": 0.3,
        "local_baseline": False,
        "domain_report": False,
    }
)  # fmt: skip
CLIENTS = list(ROUND.clients)
BOUNDED_S = 30.0  # a store operation against a dead server must give up within this




# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """rclone's S3 server only; ECOS_S3_* point the project's Store at it."""
    run_dir = tmp_path_factory.mktemp("faults-infra")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_S3_PORT=str(_free_port()), ECOS_S3_BUCKET="ecos")
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")  # the repo's .env must not leak in
    mp = pytest.MonkeyPatch()
    try:
        try:
            rec = services.start("s3", cfg)
        except services.ServiceError as err:
            pytest.fail(f"could not start the S3 server: {err}", pytrace=False)
        key, secret = cfg.credentials(create=False)
        mp.setenv("ECOS_S3_ENDPOINT", cfg.s3_url)
        mp.setenv("ECOS_S3_KEY", key)
        mp.setenv("ECOS_S3_SECRET", secret)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("ECOS_STORE", raising=False)
        catalog.store.cache_clear()  # Store objects made from now on pick the settings up
        print(f"\nS3 ready in {rec.ready_s:.1f} s on {cfg.s3_url}", file=sys.stderr)
        yield cfg
    finally:
        services.stop("s3", cfg, quiet=True)
        mp.undo()
        catalog.store.cache_clear()


@pytest.fixture(autouse=True)
def _s3_running(request):
    """Tests that stop the server restart it in a finally; this also covers a test that
    died before it could (a no-op when the server runs)."""
    if "s3" in request.fixturenames:
        cfg = request.getfixturevalue("s3")
        if not services._service_running(cfg, "s3"):
            services.start("s3", cfg)


@pytest.fixture
def quiet_tasks(monkeypatch):
    """Task bodies called undecorated (.fn) have no Prefect run context for get_run_logger."""
    logger = logging.getLogger("test-faults-s3")
    monkeypatch.setattr("tasks.responses.get_run_logger", lambda: logger)
    monkeypatch.setattr("tasks.probe.get_run_logger", lambda: logger)


@pytest.fixture(scope="module")
def store_url(s3) -> str:
    return f"s3://{s3.s3_bucket}/faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults-devices")


@pytest.fixture(scope="module")
def enrollments(store_url, devices) -> dict:
    """Enrolled as a device would be (registry + device copy), so the flow keeps these keys."""
    store = catalog.store(store_url)
    out = {}
    for c in CLIENTS:
        out[c] = enroll(store, c, 50.0)
        save_enrollment(out[c], devices / c / "enrollment.json")
    return out


def signed(round_id: str, claimed: str, scores, key_b64: str) -> bytes:
    return signed_response_bytes(response_json_bytes(round_id, claimed, np.asarray(scores, dtype=float)), key_b64)


def inner_scores(data: bytes) -> list[float]:
    raw = base64.b64decode(json.loads(data)["response"]["scores_f32_b64"])
    return np.frombuffer(raw, dtype="<f4").astype(float).tolist()


def reasons_by_key(ledger: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in ledger["rejected"]:
        out.setdefault(r["key"].rsplit("/", 1)[-1], []).append(r["reason"])
    return out

