"""What a user brings, listed as rows to ingest (no pixels are read here).

A source is one of:
  * a manifest, .csv or .parquet, columns uri, domain, and optionally label and id
    (relative uris resolve against the manifest's folder; without an id column the id
    is "<manifest stem>/<row>");
  * an image folder root/<class>/<files> (label = index of the class in sorted order,
    domain = the folder's name unless given);
  * a built-in domain, "builtin:<name>" or "builtin:<name>:<n>" (a seeded subset); a
    manifest's uri may also be "builtin:<name>/<index>", so built-in and user domains
    mix in one pool without exporting PNGs.

Rows: source_row (for messages: the manifest's data row), id, uri, label (raw text,
checked at ingest), domain.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from ecos_core.data.builtin import BUILTIN_DOMAINS, load_domain, parse_builtin
from ecos_core.pool.synthetic import augmented_labels
from ecos_core.data.user import _class_dirs, _open_store, _is_hidden, _join_url, _read_table, _resolve, _storage_errors, _text

ROW_COLUMNS = ("source_row", "id", "uri", "label", "domain")
_MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


def _rows(ids: list[str], uris: list[str], labels: list[str], domains: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"source_row": np.arange(len(ids), dtype=np.int64), "id": ids, "uri": uris,
                         "label": labels, "domain": domains})  # fmt: skip


def builtin_rows(spec: str, seed: int = 0) -> pd.DataFrame:
    name, count = parse_builtin(spec)
    part = load_domain(name, max_samples=count, seed=seed)
    ids = part.ids.tolist()
    return _rows(ids, [f"builtin:{i}" for i in ids], [str(int(y)) for y in part.labels], part.domains.tolist())


def manifest_rows(url: str, base: str | None = None, required: tuple[str, ...] = ("uri", "domain")) -> pd.DataFrame:
    """Relative uris resolve against `base`, else the manifest's folder."""
    table = _read_table(url)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{url}: manifest is missing columns {missing} (has {list(table.columns)})")
    if table.empty:
        raise ValueError(f"{url}: manifest has no rows")
    base = base if base is not None else url.rsplit("/", 1)[0] if "/" in url else "."
    stem = PurePosixPath(url.rsplit("/", 1)[-1]).stem
    uris, ids, domains, labels = [], [], [], []
    for row in range(len(table)):
        uri, domain = _text(table["uri"].iat[row]), _text(table["domain"].iat[row])
        sample_id = _text(table["id"].iat[row]) if "id" in table.columns else f"{stem}/{row:06d}"
        for what, value in (("uri", uri), ("domain", domain), ("id", sample_id)):
            if not value:
                raise ValueError(f"{url}: row {row}: empty {what}")
        uris.append(uri if uri.startswith("builtin:") else _resolve(uri, base))
        ids.append(sample_id)
        domains.append(domain)
        labels.append(_text(table["label"].iat[row]) if "label" in table.columns else "")
    rows = _rows(ids, uris, labels, domains)
    dup = rows["id"].duplicated()
    if dup.any():
        raise ValueError(f"{url}: row {int(np.flatnonzero(dup)[0])}: duplicate id {rows['id'][dup].iloc[0]!r}")
    return rows


def folder_rows(root: str, domain: str | None = None) -> pd.DataFrame:
    fs, path, dirs = _class_dirs(root)
    domain = domain or posixpath.basename(path.rstrip("/")) or "user"
    uris, ids, labels = [], [], []
    for label, (name, class_path) in enumerate(dirs):
        with _storage_errors(_join_url(fs, root, class_path), "list class folder"):
            files = sorted(fs.find(class_path))
        for file_path in files:
            rel = posixpath.relpath(file_path, class_path)
            if not _is_hidden(rel):
                uris.append(_join_url(fs, root, file_path) if "://" in root else file_path)
                ids.append(f"{domain}/{name}/{rel}")
                labels.append(str(label))
    if not uris:
        raise ValueError(f"{root}: empty image folder (class folders {[d for d, _ in dirs]} hold no files)")
    return _rows(ids, uris, labels, [domain] * len(ids))


def augment_rows(spec: str) -> pd.DataFrame:
    """"augment:<n>[:<seed>]": n synthetic images (ecos_core.pool.synthetic)."""
    check_source(spec)
    n, _, seed = spec.removeprefix("augment:").partition(":")
    seed_i = int(seed or 0)
    labels, domains = augmented_labels(seed_i, int(n))
    ids = [f"aug{seed_i}/{i:07d}" for i in range(int(n))]
    return _rows(ids, [f"augment:{seed_i}/{i}" for i in range(int(n))], [str(y) for y in labels], domains)


def check_source(spec: str) -> None:
    """The cheap checks of a source (its form, that it exists), before anything starts."""
    if spec.startswith("builtin:"):
        name, _ = parse_builtin(spec)
        if name not in BUILTIN_DOMAINS:
            raise ValueError(f"{spec}: unknown built-in domain {name!r}; known: {list(BUILTIN_DOMAINS)}")
    elif spec.startswith("augment:"):
        n, _, seed = spec.removeprefix("augment:").partition(":")
        if not n.isdigit() or (seed and not seed.isdigit()):
            raise ValueError(f"{spec}: expected augment:<count>[:<seed>]")
    elif spec.lower().endswith(_MANIFEST_SUFFIXES):
        fs, path = _open_store(spec)
        with _storage_errors(spec, "access manifest"):
            if not fs.isfile(path):
                raise FileNotFoundError(f"{spec}: manifest not found")
    else:
        _class_dirs(spec)


def source_rows(spec: str, domain: str | None = None, seed: int = 0) -> pd.DataFrame:
    """The rows of one source, in a stable order (a rerun lists the same rows)."""
    if spec.startswith("builtin:"):
        return builtin_rows(spec, seed)
    if spec.startswith("augment:"):
        return augment_rows(spec)
    if spec.lower().endswith(_MANIFEST_SUFFIXES):
        return manifest_rows(spec)
    return folder_rows(spec, domain)
