"""Flow-run names that say what a run does, so the UI's run list reads without opening
each run (Prefect's default is a random adjective-animal pair)."""

from __future__ import annotations

import posixpath
import re

from prefect.runtime import flow_run


def _field(value: object, *path: str) -> object:
    """A nested parameter, whether it arrives as a model (a subflow call) or a dict (a deployment's run)."""
    for name in path:
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return value


def _short(source: object) -> str:
    """A pool's or manifest's name: its last path part, without the extension."""
    text = str(source or "builtin").rstrip("/")
    return re.sub(r"\.(csv|parquet|pq)$", "", posixpath.basename(text) or text)


def index_run() -> str:
    cfg = flow_run.parameters.get("cfg") or {}
    space, k = _field(cfg, "index", "feature_space") or "combined", _field(cfg, "index", "k") or 100
    return f"index-{_short(_field(cfg, 'data', 'pool'))}-{space}-k{k}"


def pool_index_run() -> str:
    params = flow_run.parameters
    return f"pool-index-{_short(params.get('source') or params.get('pool_url'))}-k{_field(params.get('index') or {}, 'k') or 100}"


def ingest_run() -> str:
    return f"ingest-{_short(flow_run.parameters.get('source'))}"


def train_run() -> str:
    return f"train-{flow_run.parameters.get('round_id')}"
