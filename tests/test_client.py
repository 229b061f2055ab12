"""The edge client against a local store: fetch + verify probe, answer, upload once."""

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ecos_core import layout
from ecos_core.backbone import BackboneSpec
from ecos_core.client import answer_probe, fetch_probe, upload_response
from ecos_core.data.npz import save_imageset
from ecos_core.protocol import ProtocolError, decode_response, encode_probe
from ecos_core.store import Store
from tests.conftest import make_imageset

K = 8


def publish(store: Store, round_id: str = "r1", spec: BackboneSpec | None = None) -> None:
    centroids = np.random.default_rng(0).normal(size=(K, 1280)).astype(np.float32)
    deadline = datetime.now(timezone.utc) + timedelta(minutes=5)
    _, pj, npy = encode_probe(round_id, centroids, spec or BackboneSpec(), 6.1, 1e-5, deadline)
    store.write_bytes(layout.probe_centroids(round_id), npy)
    store.write_bytes(layout.probe_json(round_id), pj)


def test_answer_is_k_noisy_scores_and_uploads_once(tmp_path):
    store = Store(str(tmp_path))
    publish(store)
    probe, centroids, down = fetch_probe(store, "r1")
    data = make_imageset(40)
    answer = answer_probe(probe, centroids, data.images, "c1", seed=0, show_bar=False)
    resp = decode_response(answer.wire, "t", expected_round="r1", expected_k=K, sigma=6.1, known_clients={"c1"})
    assert resp.scores().shape == (K,)
    assert abs(resp.scores().sum() - 40) < 6.1 * np.sqrt(K) * 5  # counts sum to n, plus noise
    assert len(answer.wire) <= 4 * K + 1024 and down <= 4 * K * 1280 + 4096
    assert answer.epsilon == pytest.approx(0.584, abs=0.002)
    upload_response(store, "r1", "c1", answer.wire)
    with pytest.raises(ProtocolError, match="already answered"):
        upload_response(store, "r1", "c1", b"{}")
    assert store.read_bytes(layout.response("r1", "c1")) == answer.wire  # the first answer is kept


def test_client_refuses_a_probe_for_other_weights(tmp_path):
    store = Store(str(tmp_path))
    publish(store, spec=BackboneSpec(weights_sha256="0" * 64))
    probe, centroids, _ = fetch_probe(store, "r1")
    with pytest.raises(ValueError, match="weights differ"):
        answer_probe(probe, centroids, make_imageset(4).images, "c1", show_bar=False)


def test_missing_probe_times_out_clearly(tmp_path):
    with pytest.raises(TimeoutError, match="no probe for round 'r9'"):
        fetch_probe(Store(str(tmp_path)), "r9", wait_s=0.2, poll_s=0.1)


def test_client_cli_never_imports_prefect(tmp_path):
    store = Store(str(tmp_path / "s"))
    publish(store)
    save_imageset(make_imageset(20), tmp_path / "data.npz")
    code = (
        "import sys; from ecos_cli.main import app\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'lightning')]\n"
        "assert not bad, bad[:5]\n"
    )
    args = ["client", "respond", "--store", str(tmp_path / "s"), "--round", "r1", "--client-id", "c1",
            "--data", str(tmp_path / "data.npz"), "--no-progress", "--seed", "1"]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert store.exists(layout.response("r1", "c1"))
