"""Selective manual labeling: export the selected samples to annotators, import their labels.

The round trip is a plain table, CSV or JSON by file extension, at any fsspec URL:

* export: one row per selected sample: sample_id, image_uri, label (empty).
* import: rows with sample_id and label (extra columns such as image_uri are ignored).
  CSV is read as text so ids like "mnist/000123" or "007" keep their exact spelling;
  JSON must be a list of objects.

Annotator files are hand-edited, so the import is strict: every problem raises
LabelImportError naming the file and the offending ids, and nothing is returned or
written until the whole file has passed.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import re
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

ID_COLUMN, URI_COLUMN, LABEL_COLUMN = "sample_id", "image_uri", "label"
MAX_LABEL_FILE_BYTES = 50_000_000  # a hand-labelled file is small; never read unbounded
_SHOWN_IDS = 10  # offending ids quoted per message; the full list is on the exception
_INT_TEXT = re.compile(r"[+-]?\d+")


class LabelImportError(ValueError):
    """An annotator file failed validation; `path` and the offending `ids` are attached."""

    def __init__(self, path: str, problem: str, ids: list[str] | None = None) -> None:
        self.path, self.problem, self.ids = path, problem, list(ids or [])
        shown = ", ".join(repr(i) for i in self.ids[:_SHOWN_IDS])
        more = f" (+{len(self.ids) - _SHOWN_IDS} more)" if len(self.ids) > _SHOWN_IDS else ""
        super().__init__(f"{path}: {problem}" + (f": {shown}{more}" if self.ids else ""))


def _format(path: str) -> str:
    ext = posixpath.splitext(path.split("?", 1)[0])[1].lower()
    if ext not in (".csv", ".json"):
        raise ValueError(f"{path}: unsupported annotation file type {ext!r} (use .csv or .json)")
    return ext[1:]


def _as_ids(ids: np.ndarray, what: str) -> list[str]:
    out = [str(i) for i in np.asarray(ids).reshape(-1)]
    dup = sorted(i for i, c in pd.Series(out, dtype=object).value_counts().items() if c > 1)
    if dup:
        raise ValueError(f"{what} has duplicate sample ids: {dup[:_SHOWN_IDS]}")
    return out


# --------------------------------------------------------------------------- export


def export_for_annotation(ids: np.ndarray, uris: list[str] | None, path: str, labels: list[int] | None = None) -> None:
    """Write one row per selected sample (sample_id, image_uri, empty label) to `path`.

    The format follows the extension (.csv or .json). `uris` may be None when the
    annotators look images up by id; the column is then left empty. `labels` fills the
    label column (what an annotator hands back).
    """
    fmt = _format(path)
    id_list = _as_ids(ids, f"{path}: ids to export")
    if uris is not None and len(uris) != len(id_list):
        raise ValueError(f"{path}: {len(uris)} image uris for {len(id_list)} sample ids")
    uri_list = [str(u) for u in uris] if uris is not None else [""] * len(id_list)
    label_list = [int(v) for v in labels] if labels is not None else [None] * len(id_list)
    if len(label_list) != len(id_list):
        raise ValueError(f"{path}: {len(label_list)} labels for {len(id_list)} sample ids")
    if fmt == "csv":  # an empty cell: no label yet
        text = pd.DataFrame({ID_COLUMN: id_list, URI_COLUMN: uri_list, LABEL_COLUMN: label_list}).to_csv(index=False)
    else:  # null, not "", marks "no label yet" in JSON
        text = json.dumps(
            [{ID_COLUMN: i, URI_COLUMN: u, LABEL_COLUMN: v} for i, u, v in zip(id_list, uri_list, label_list)], indent=1
        )
    # Render the whole file first, then write it in one go: a failure above leaves no partial file.
    try:
        with fsspec.open(path, "w", encoding="utf-8", newline="", **_options(path)) as fh:
            fh.write(text)
    except Exception as exc:  # each fsspec backend has its own exception types
        raise ValueError(f"{path}: cannot write annotation file ({type(exc).__name__}: {exc})") from exc


def _options(url: str) -> dict:
    """The store's S3 endpoint, credentials and checksum settings for an s3:// URL, nothing otherwise."""
    from ecos_core.settings import Settings

    return Settings().storage_options(url)


def render_images(images: np.ndarray, ids: np.ndarray, folder: str) -> list[str]:
    """Write each image as folder/<id>.png for annotators; returns the URIs, in `ids` order.

    "/" in ids ("mnist/000123") becomes "__" so every image sits directly in `folder`.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{folder}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    id_list = _as_ids(ids, f"{folder}: ids to render")
    if len(id_list) != len(images):
        raise ValueError(f"{folder}: {len(id_list)} ids for {len(images)} images")
    fs, root = fsspec.core.url_to_fs(folder, **_options(folder))
    fs.makedirs(root, exist_ok=True)
    names = [re.sub(r"[^A-Za-z0-9._-]", "_", i.replace("/", "__")) + ".png" for i in id_list]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: sample ids collide once made file-name safe")
    uris = []
    for image, name in zip(images, names):
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="PNG")
        target = posixpath.join(root, name)
        with fs.open(target, "wb") as fh:
            fh.write(buf.getvalue())
        uris.append(fs.unstrip_protocol(target) if "://" in folder else target)
    return uris


# --------------------------------------------------------------------------- import


def _read_text(path: str) -> str:
    try:
        with fsspec.open(path, "rb", **_options(path)) as fh:
            data = fh.read(MAX_LABEL_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise LabelImportError(path, "file not found") from exc
    except Exception as exc:  # each fsspec backend has its own exception types
        raise LabelImportError(path, f"cannot read ({type(exc).__name__}: {exc})") from exc
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise LabelImportError(path, f"file too large (> {MAX_LABEL_FILE_BYTES} bytes)")
    try:
        return data.decode("utf-8-sig")  # spreadsheet exports often carry a BOM
    except UnicodeDecodeError as exc:
        raise LabelImportError(path, f"unparsable file: not UTF-8 text ({exc})") from exc


def _rows(path: str, fmt: str, text: str) -> list[tuple[str, Any]]:
    """(sample_id, raw label) pairs in file order; a raw label of None means "not labelled"."""
    if fmt == "csv":
        try:
            # dtype=str + no NA parsing: ids and labels stay exactly as the annotator typed them
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            raise LabelImportError(path, f"unparsable CSV ({exc})") from exc
        frame.columns = [str(c).strip() for c in frame.columns]
        missing = [c for c in (ID_COLUMN, LABEL_COLUMN) if c not in frame.columns]
        if missing:
            raise LabelImportError(path, f"missing columns {missing} (have {list(frame.columns)})")
        return [(i.strip(), (lab.strip() or None)) for i, lab in zip(frame[ID_COLUMN], frame[LABEL_COLUMN])]
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelImportError(path, f"unparsable JSON ({exc})") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LabelImportError(path, "unparsable JSON: expected a list of {sample_id, label} objects")
    lacking = sorted({c for r in records for c in (ID_COLUMN, LABEL_COLUMN) if c not in r})
    if lacking:
        raise LabelImportError(path, f"missing columns {lacking} in some records")
    return [(str(r[ID_COLUMN]).strip(), r[LABEL_COLUMN]) for r in records]


def _parse_label(raw: Any) -> int | None:
    """An int from an annotator's cell, or None if it is not a whole number (bools, 3.5, "cat")."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if math.isfinite(raw) and raw.is_integer() else None
    if isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
        return int(raw.strip())
    return None


def import_labels(path: str, expected_ids: np.ndarray, classes: int = 10) -> np.ndarray:
    """Read annotators' labels from `path` (CSV or JSON); int64 labels in `expected_ids` order.

    Raises LabelImportError (file name + offending ids) for an unparsable file, missing
    columns, duplicate rows, unknown ids, expected ids left unlabelled or absent, and
    labels that are not integers in 0..classes-1.
    """
    if classes < 1:
        raise ValueError(f"{path}: classes must be >= 1, got {classes}")
    fmt = _format(path)
    expected = _as_ids(expected_ids, f"{path}: expected ids")
    rows = _rows(path, fmt, _read_text(path))

    counts: dict[str, int] = {}
    for sample_id, _ in rows:
        counts[sample_id] = counts.get(sample_id, 0) + 1
    duplicates = [i for i, c in counts.items() if c > 1]
    if duplicates:
        raise LabelImportError(path, "duplicate rows for sample ids", duplicates)
    expected_set = set(expected)
    unknown = [i for i, _ in rows if i not in expected_set]
    if unknown:
        raise LabelImportError(path, "unknown sample ids (not in the exported selection)", unknown)

    raw = dict(rows)
    missing = [i for i in expected if raw.get(i) is None]  # absent row or empty label cell
    if missing:
        raise LabelImportError(path, "expected sample ids have no label", missing)
    parsed = {i: _parse_label(raw[i]) for i in expected}
    bad = [i for i in expected if parsed[i] is None or not 0 <= parsed[i] < classes]  # type: ignore[operator]
    if bad:
        raise LabelImportError(path, f"labels must be integers in 0..{classes - 1}", bad)
    return np.array([parsed[i] for i in expected], dtype=np.int64)


# --------------------------------------------------------------------------- simulation


def annotate_with_ground_truth(export_path: str, labels_by_id: dict[str, int], out_path: str) -> None:
    """The benchmark's annotator: fill an exported file's label column from ground truth.

    It reads the export like a person would (only the ids in it), so the benchmark's
    labels take the same export → annotate → import_labels path as real annotators'."""
    rows = _rows(export_path, _format(export_path), _read_text(export_path))
    unknown = [i for i, _ in rows if i not in labels_by_id]
    if unknown:
        raise LabelImportError(export_path, "no ground truth for sample ids", unknown)
    ids = [i for i, _ in rows]
    export_for_annotation(np.array(ids, dtype=object), None, out_path, [labels_by_id[i] for i in ids])
