"""The pool's catalog: one row per image, pointing into the shards.

Columns: id (unique, stable), shard (sha256), row (in the shard), label (class id, or
UNLABELLED: the paper's pool is unlabelled until annotators label the selection),
domain, uri (where the image came from). Metadata only: ~100 bytes a row, so even a
million-image catalog fits in one process, while pixels and features never do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ("id", "shard", "row", "label", "domain", "uri")
UNLABELLED = -1


@dataclass(frozen=True)
class PoolCatalog:
    table: pd.DataFrame

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"pool catalog is missing columns {missing}")
        if self.table["id"].duplicated().any():
            dup = self.table["id"][self.table["id"].duplicated()].iloc[:3].tolist()
            raise ValueError(f"pool catalog has duplicate ids, e.g. {dup}")

    def __len__(self) -> int:
        return len(self.table)

    @staticmethod
    def empty() -> "PoolCatalog":
        return PoolCatalog(pd.DataFrame({c: pd.Series(dtype="int64" if c in ("row", "label") else "str") for c in COLUMNS}))

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy(dtype=str)

    @property
    def labels(self) -> np.ndarray:
        return self.table["label"].to_numpy(dtype=np.int64)

    @property
    def domains(self) -> np.ndarray:
        return self.table["domain"].to_numpy(dtype=str)

    def shards(self) -> list[str]:
        """Shard names in catalog order (the order every per-shard pass follows)."""
        return list(dict.fromkeys(self.table["shard"].tolist()))

    def shard_sizes(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.table.groupby("shard", sort=False).size().items()}

    def domain_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.table["domain"].value_counts().sort_index().items()}

    def locate(self, ids: np.ndarray) -> pd.DataFrame:
        """(shard, row) of each id, in the order given; every id must be in the pool."""
        where = pd.Index(self.table["id"]).get_indexer(np.asarray(ids, dtype=str))
        if (where < 0).any():
            missing = np.asarray(ids)[where < 0][:3].tolist()
            raise KeyError(f"{int((where < 0).sum())} ids are not in the pool, e.g. {missing}")
        return self.table.iloc[where].reset_index(drop=True)

    def extend(self, rows: pd.DataFrame) -> "PoolCatalog":
        """This catalog plus new rows (new shards); the old rows keep their order."""
        return PoolCatalog(pd.concat([self.table, rows[list(COLUMNS)]], ignore_index=True))

    def to_parquet(self) -> bytes:
        buf = io.BytesIO()
        self.table[list(COLUMNS)].to_parquet(buf, index=False)
        return buf.getvalue()

    @staticmethod
    def from_parquet(data: bytes, where: str) -> "PoolCatalog":
        try:
            table = pd.read_parquet(io.BytesIO(data))
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ValueError(f"{where}: not a pool catalog ({type(err).__name__}: {err})") from None
        table["row"] = table["row"].astype(np.int64)
        table["label"] = table["label"].astype(np.int64)
        return PoolCatalog(table)
