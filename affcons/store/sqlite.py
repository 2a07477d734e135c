"""SQLite backend of :class:`~affcons.store.base.RagStore`: one file, ``sqlite:///relative.db`` or
``sqlite:////absolute.db``.

WAL journal plus a busy timeout let several worker processes on one machine write blocks at once (each write is one
``BEGIN IMMEDIATE`` transaction, so writers queue for the lock instead of failing). Not for network file systems.
``synchronous=NORMAL``: a commit is safe from any crash of the writing process; a power loss may roll back the last
commits (never corrupt the file), as it may lose the zarr chunks written just before it.
"""

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from affcons.errors import StoreError
from affcons.files import nearly_full
from affcons.store.base import (
    DEFAULT_BATCH_SIZE,
    BackendErrors,
    Bounds,
    RagStore,
)

SCHEME_PREFIX = "sqlite:///"
DEFAULT_BUSY_TIMEOUT_MS = 60_000

TABLES = ("nodes", "edges", "edge_parts", "meta", "store_info")
#: Schema 4: a block's internal and its crossing edges are one row each, columns as little-endian arrays.
SQLITE_SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY, z REAL NOT NULL, y REAL NOT NULL, x REAL NOT NULL, size INTEGER NOT NULL,
    block INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_zyx ON nodes (z, y, x);
CREATE INDEX IF NOT EXISTS nodes_block ON nodes (block);
CREATE TABLE IF NOT EXISTS edge_parts (
    block INTEGER NOT NULL, crossing INTEGER NOT NULL, rows INTEGER NOT NULL, u BLOB NOT NULL, v BLOB NOT NULL,
    affinity_sum BLOB NOT NULL, count BLOB NOT NULL, histogram BLOB NOT NULL, linked BLOB NOT NULL,
    quantised_sum BLOB NOT NULL, PRIMARY KEY (block, crossing)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
#: The columns of an ``edge_parts`` row after ``rows``, with their little-endian types.
EDGE_BLOBS = (
    ("u", "<i8"),
    ("v", "<i8"),
    ("affinity_sum", "<f8"),
    ("count", "<i8"),
    ("histogram", "<u4"),
    ("linked", "<i8"),
    ("quantised_sum", "<i8"),
)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` URL (PATH relative to the working directory unless it starts with /)."""
    if not url.startswith(SCHEME_PREFIX) or len(url) == len(SCHEME_PREFIX) or "?" in url:
        raise StoreError(
            f"{url}: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db (no host, no query)"
        )
    return Path(url[len(SCHEME_PREFIX) :])


class SQLiteRagStore(RagStore):
    """RAG store in one SQLite file. Tables: ``nodes(id, z, y, x, size, block)`` (indexes (z, y, x), block),
    ``edge_parts(block, crossing, rows, u, v, affinity_sum, count, histogram, linked, quantised_sum)`` (key (block,
    crossing): one row per block and part, each column a little-endian array of ``rows`` values, see
    :data:`EDGE_BLOBS`), ``meta(key, value JSON)``, ``store_info(key, value)``.

    Edges are stored columnar because a block writes and the agglomeration reads them by the thousand: one row per
    part costs a few BLOB copies instead of a B-tree insert per edge (``benchmarks/store.py``: reads 3.2x, writes
    1.2x the edges per second of one row per edge; 48.6 instead of 73.8 B per edge). An edge
    stored by another block is still refused on write where that block owns one of its endpoints (the store's
    contract: an edge is written from the block of one of its endpoints); any other pair stored twice is refused
    when the whole table is read.

    ``timeout_ms`` is how long a writer waits for another process's transaction (busy timeout; default 60 s).
    """

    schema_version = SQLITE_SCHEMA_VERSION

    def __init__(
        self,
        url: str,
        mode: str = "a",
        histogram_bins: int = 0,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout_ms: int | None = None,
    ):
        super().__init__(url, mode, histogram_bins, batch_size)
        self.path = sqlite_path(url)
        busy_ms = DEFAULT_BUSY_TIMEOUT_MS if timeout_ms is None else timeout_ms
        if mode == "r" and not self.path.is_file():
            raise StoreError(f"{self.url}: no store at {self.path.absolute()} (mode 'r' needs an existing file)")
        try:
            if mode != "r":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._connection = sqlite3.connect(self.path, timeout=busy_ms / 1000, isolation_level=None)
                self._connection.execute("PRAGMA journal_mode=WAL")
                # commits survive any crash of the process (the WAL is written before COMMIT returns); only a power
                # loss may roll back the last ones, never corrupt the file. FULL would fsync every block's write.
                self._connection.execute("PRAGMA synchronous=NORMAL")
            else:
                self._connection = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_ms / 1000, isolation_level=None
                )
            self._connection.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"{self.url}: cannot open SQLite store at {self.path.absolute()}: {error}") from None
        try:
            self._init_schema()
        except BaseException:
            self._connection.close()
            raise

    def _init_schema(self) -> None:
        with self._errors("creating the schema"):
            if self.mode != "r":
                with self._transaction():
                    if self.mode == "w":
                        for table in TABLES:
                            self._connection.execute(f"DROP TABLE IF EXISTS {table}")
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        self._connection.execute(statement)
                    self._connection.executemany(
                        "INSERT OR IGNORE INTO store_info (key, value) VALUES (?, ?)",
                        [("schema_version", self.schema_version), ("histogram_bins", self.histogram_bins)],
                    )
            tables = {row[0] for row in self._connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "store_info" not in tables:
                raise StoreError(f"{self.url}: {self.path} is not an affcons RAG store (no store_info table)")
            info = dict(self._connection.execute("SELECT key, value FROM store_info"))
        self._check_store_info(info.get("schema_version"), info.get("histogram_bins"))

    # --------------------------------------------------------------------------------------------------- helpers

    def _errors(self, action: str):
        return _SQLiteErrors(self.url, action)

    def _transaction(self):
        return _Transaction(self._connection)

    # ---------------------------------------------------------------------------------------------------- writes

    def _replace_nodes(self, block, ids, position, size) -> None:
        rows = zip(ids.tolist(), *position.T.tolist(), size.tolist(), itertools.repeat(block))
        try:
            with self._errors(f"writing nodes of block {block}"), self._transaction():
                self._connection.execute("DELETE FROM nodes WHERE block = ?", (block,))
                # one statement over the row iterator (sqlite3 consumes it lazily): no per-batch lists
                self._connection.executemany(
                    "INSERT INTO nodes (id, z, y, x, size, block) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
        except _Conflict:
            with self._errors(f"looking up the owner of a node of block {block}"):
                for node_id in ids.tolist():
                    owner = self._connection.execute("SELECT block FROM nodes WHERE id = ?", (node_id,)).fetchone()
                    if owner is not None:
                        raise StoreError(
                            f"{self.url}: block {block}: node {node_id} is already stored by block {owner[0]}"
                        ) from None
            raise StoreError(f"{self.url}: block {block}: a node id is already stored by another block") from None

    def _replace_edges(
        self, block, u, v, affinity_sum, count, histogram, linked, quantised, crossing, replaced
    ) -> None:
        columns = (u, v, affinity_sum, count, histogram, linked, quantised)
        parts = (False, True) if replaced is None else (replaced,)
        self._refuse_edges_of_other_blocks(block, u, v, crossing)
        with self._errors(f"writing edges of block {block}"), self._transaction():
            for part in parts:
                self._connection.execute("DELETE FROM edge_parts WHERE block = ? AND crossing = ?", (block, int(part)))
                rows = crossing == part
                if rows.any():
                    blobs = [
                        np.ascontiguousarray(c[rows], dtype).tobytes() for c, (_, dtype) in zip(columns, EDGE_BLOBS)
                    ]
                    self._connection.execute(
                        "INSERT INTO edge_parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (block, int(part), int(rows.sum()), *blobs),
                    )

    def _refuse_edges_of_other_blocks(self, block, u, v, crossing) -> None:
        """StoreError naming the owner if another block stores one of these (u, v) pairs and owns an endpoint of it.
        Only crossing rows can have an endpoint of another block; the owners' parts are read by key."""
        if not crossing.any():
            return
        owners = self._node_owners(np.concatenate([u[crossing], v[crossing]]))
        others = np.setdiff1d(owners, [block, -1]).tolist()
        if not others:
            return
        u, v = u[crossing], v[crossing]
        owner_u, owner_v = owners[: len(u)], owners[len(u) :]
        pairs = _pair_keys(u, v)
        for other in others:
            # its crossing part; its internal one only for pairs with both endpoints its own (none in the pipeline)
            parts = (True, False) if np.any((owner_u == other) & (owner_v == other)) else (True,)
            stored = [_pair_keys(b[0], b[1]) for part in parts for b in self._read_block_edge_batches([other], part)]
            taken = np.isin(pairs, np.concatenate(stored)) if stored else np.zeros(len(pairs), bool)
            if taken.any():
                i = int(np.flatnonzero(taken)[0])
                raise StoreError(f"{self.url}: block {block}: edge ({u[i]}, {v[i]}) is already stored by block {other}")

    def _set_meta_text(self, key, text) -> None:
        with self._errors(f"writing meta {key!r}"), self._transaction():
            self._connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text))

    # ----------------------------------------------------------------------------------------------------- reads

    @staticmethod
    def _where(bounds: Bounds | None, prefix: str = "") -> tuple[str, list[float]]:
        clauses, parameters = [], []
        for axis, (begin, end) in zip("zyx", bounds or ()):
            if begin is not None:
                clauses.append(f"{prefix}{axis} >= ?")
                parameters.append(begin)
            if end is not None:
                clauses.append(f"{prefix}{axis} < ?")
                parameters.append(end)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", parameters

    def _batches(self, sql: str, parameters: list, action: str) -> Iterator[list[tuple]]:
        with self._errors(action):
            cursor = self._connection.execute(sql, parameters)
            try:
                while rows := cursor.fetchmany(self.batch_size):
                    yield rows
            finally:
                cursor.close()

    def _node_batches(self, sql: str, parameters: list, action: str) -> Iterator[tuple]:
        for rows in self._batches(sql, parameters, action):
            ids, z, y, x, size = zip(*rows)
            yield (
                np.array(ids, np.int64),
                np.stack([np.array(c, np.float64) for c in (z, y, x)], axis=1),
                np.array(size, np.int64),
            )

    def _read_node_batches(self, bounds) -> Iterator[tuple]:
        where, parameters = self._where(bounds)
        yield from self._node_batches(f"SELECT id, z, y, x, size FROM nodes{where}", parameters, "reading nodes")

    def _all_node_ids(self) -> np.ndarray:
        batches = self._batches("SELECT id FROM nodes", [], "reading node ids")
        return np.array([row[0] for rows in batches for row in rows], np.int64)

    def _read_block_node_batches(self, blocks) -> Iterator[tuple]:
        marks = ", ".join("?" * len(blocks))
        sql = f"SELECT id, z, y, x, size FROM nodes WHERE block IN ({marks})"
        yield from self._node_batches(sql, blocks, "reading the nodes of blocks")

    def _edge_parts(self, sql: str, parameters: list, action: str) -> Iterator[tuple]:
        """Decoded ``edge_parts`` rows (one batch per stored part) of ``SELECT rows, <EDGE_BLOBS> ...``."""
        bins = self.histogram_bins
        for rows in self._batches(sql, parameters, action):
            for count, *blobs in rows:
                columns = [np.frombuffer(blob, dtype) for blob, (_, dtype) in zip(blobs, EDGE_BLOBS)]
                if any(
                    len(c) != count * (bins if name == "histogram" else 1) for c, (name, _) in zip(columns, EDGE_BLOBS)
                ):
                    raise StoreError(f"{self.url}: {action}: a stored edge part does not hold {count} rows")
                u, v, affinity_sum, counts, histogram, linked, quantised = columns
                yield (
                    u.astype(np.int64),
                    v.astype(np.int64),
                    affinity_sum.astype(np.float64),
                    counts.astype(np.int64),
                    histogram.reshape(count, bins).astype(np.uint32),
                    linked.astype(np.int64),
                    quantised.astype(np.int64),
                )

    EDGE_COLUMNS = "rows, " + ", ".join(name for name, _ in EDGE_BLOBS)

    def _read_edge_batches(self, bounds) -> Iterator[tuple]:
        batches = self._edge_parts(f"SELECT {self.EDGE_COLUMNS} FROM edge_parts", [], "reading edges")
        if bounds is None:
            yield from batches
            return
        ids = np.concatenate([np.zeros(0, np.int64)] + [b[0] for b in self._read_node_batches(bounds)])
        for batch in batches:
            keep = np.isin(batch[0], ids)
            if keep.any():
                yield tuple(column[keep] for column in batch)

    def _read_block_edge_batches(self, blocks, crossing) -> Iterator[tuple]:
        marks = ", ".join("?" * len(blocks))
        sql = f"SELECT {self.EDGE_COLUMNS} FROM edge_parts WHERE block IN ({marks}) AND crossing = ?"
        yield from self._edge_parts(sql, [*blocks, int(crossing)], "reading the edges of blocks")

    def _node_blocks(self, ids) -> tuple[np.ndarray, np.ndarray]:
        marks = ", ".join("?" * len(ids))
        rows = [
            r
            for batch in self._batches(
                f"SELECT id, block FROM nodes WHERE id IN ({marks})", ids.tolist(), "looking up node blocks"
            )
            for r in batch
        ]
        found = np.array([r[0] for r in rows], np.int64)
        return found, np.array([r[1] for r in rows], np.int64)

    def _block_node_ids(self, block) -> np.ndarray:
        rows = self._batches("SELECT id FROM nodes WHERE block = ?", [block], f"writing edges of block {block}")
        return np.array([r[0] for batch in rows for r in batch], np.int64)

    def _count(self, table) -> int:
        sql = "SELECT COUNT(*) FROM nodes" if table == "nodes" else "SELECT COALESCE(SUM(rows), 0) FROM edge_parts"
        with self._errors(f"counting {table}"):
            return self._connection.execute(sql).fetchone()[0]

    def _get_meta_text(self, key) -> str | None:
        with self._errors(f"reading meta {key!r}"):
            row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _close(self) -> None:
        self._connection.close()


def _pair_keys(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One comparable 16-byte value per (u, v) row (for set membership of pairs)."""
    return np.ascontiguousarray(np.stack([u, v], axis=1).astype(">i8")).view("V16").ravel()


class _Conflict(Exception):
    """A node id is already taken; the caller finds the owner after the rollback."""


class _Transaction:
    """``BEGIN IMMEDIATE`` (take the write lock now, waiting up to the busy timeout) ... ``COMMIT``/``ROLLBACK``."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self):
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.connection.execute("COMMIT")
        elif self.connection.in_transaction:
            self.connection.execute("ROLLBACK")
        return False


class _SQLiteErrors(BackendErrors):
    """Turn sqlite3 errors into StoreError naming the URL and the action; a unique-key violation into _Conflict."""

    def translate(self, error: BaseException) -> None:
        if isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error):
            raise _Conflict(str(error)) from None
        if isinstance(error, sqlite3.Error) and _disk_full(error, sqlite_path(self.url)):
            raise StoreError(
                f"{self.url}: {self.action} failed: No space left on device ({error}); free space on the disk of "
                f"{sqlite_path(self.url).parent} and re-run the same command"
            ) from None
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"{self.url}: {self.action} failed: {error}") from None


def _disk_full(error: sqlite3.Error, path: Path) -> bool:
    """Whether ``error`` comes from a full disk: SQLITE_FULL, or an I/O error while the database's disk is
    :func:`~affcons.files.nearly_full` (SQLite reports a write to a full WAL file as either)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    return code is not None and code & 0xFF == sqlite3.SQLITE_IOERR and nearly_full(path.parent)
