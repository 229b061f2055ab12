"""The round's config from the user's JSON file and flags, with errors in their words:
the flag or the file and JSON path they wrote, one line, the closest key for a typo."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config the user gave is wrong; the message names where."""


def read_config_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config {path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must be a JSON object of settings, got {type(data).__name__}")
    return data


def field_paths(model: Any, prefix: str = "") -> list[str]:
    """Every settable key of a pydantic model, dotted ("sampling.budget")."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            out += field_paths(field.annotation, f"{path}.")
    return out


def closest_key(path: str, known: list[str]) -> str | None:
    """'budget' → 'sampling.budget'; 'sampling.budjet' → 'sampling.budget'."""
    leaves: dict[str, str] = {}
    for k in known:
        leaves.setdefault(k.rsplit(".", 1)[-1], k)
    leaf = path.rsplit(".", 1)[-1]
    if leaf in leaves:
        return leaves[leaf]
    near = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    if near:
        return near[0]
    near = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
    return leaves[near[0]] if near else None


def validate(model: Any, data: dict, flags: dict[str, str], source: str) -> Any:
    """model.model_validate(data); a ValidationError becomes one ConfigError line per
    problem, naming the flag (`flags`: dotted path → flag) or the source and JSON path."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(e, model, flags, source) for e in err.errors())) from None


def _describe(error: dict, model: Any, flags: dict[str, str], source: str) -> str:
    path = ".".join(str(p) for p in error["loc"])
    where = flags.get(path) or flags.get(path.rsplit(".", 1)[0]) or (f"{source}: {path}" if path else source)
    if error["type"] == "extra_forbidden":
        hint = closest_key(path, field_paths(model))
        return f"{where}: unknown key" + (f"; did you mean '{hint}'?" if hint else "")
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    return f"{where}: {message}" + ("" if isinstance(shown, dict) or shown is None or not path else f" (got {shown!r})")
