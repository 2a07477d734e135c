"""MongoDB backend of :class:`~affcons.store.base.RagStore` (pymongo): ``mongodb://host:port/dbname[?options]``.

One document per node and per edge, written with unordered ``insert_many`` in batches of ``batch_size`` (default
1000) documents, far below MongoDB's 16 MB message limit. Collections in database ``dbname``:

- ``nodes``: ``{_id: id, z, y, x: float nm, size, block}``; indexes (z, y, x) and block.
- ``edges``: ``{u, v, sum: affinity_sum, count, hist: bytes of B little-endian uint32, linked, qsum: quantised sum,
  crossing: bool, block}``; unique (u, v), index (block, crossing).
- ``meta``: ``{_id: key, value: JSON text}``; ``store_info``: ``{_id: "schema", version, histogram_bins}``.

A server that is down or never answers is a StoreError within ``timeout_ms`` (server selection and connect; default
3000 ms, or the URL's ``serverSelectionTimeoutMS``/``connectTimeoutMS``). A server that stops answering in the middle
of an operation is one within ``socketTimeoutMS`` (default 60 s).
"""

from collections.abc import Iterator

import numpy as np
import pymongo
import pymongo.errors
from pymongo import uri_parser

from affcons.errors import StoreError
from affcons.store.base import (
    DEFAULT_BATCH_SIZE,
    BackendErrors,
    Bounds,
    RagStore,
    batched,
    histogram_from_rows,
    histogram_rows,
)

DEFAULT_TIMEOUT_MS = 3000
DEFAULT_SOCKET_TIMEOUT_MS = 60_000
COLLECTIONS = ("nodes", "edges", "meta", "store_info")
DUPLICATE_KEY = 11000


class MongoRagStore(RagStore):
    """RAG store in one MongoDB database (the URL's path). ``timeout_ms`` overrides the URL's server selection and
    connect timeouts (default 3000 ms)."""

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
        try:
            parsed = uri_parser.parse_uri(url)
        except (pymongo.errors.PyMongoError, ValueError) as error:
            raise StoreError(f"{self.url}: not a valid MongoDB URL: {error}") from None
        if not parsed["database"]:
            raise StoreError(f"{self.url}: the URL must name a database: mongodb://host:port/DBNAME[?options]")
        options = parsed["options"]
        settings = {"appname": "affcons"}
        for name in ("serverSelectionTimeoutMS", "connectTimeoutMS"):
            if timeout_ms is not None or name not in options:
                settings[name] = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
        if "socketTimeoutMS" not in options:
            settings["socketTimeoutMS"] = DEFAULT_SOCKET_TIMEOUT_MS
        try:
            self._client = pymongo.MongoClient(url, **settings)
        except pymongo.errors.PyMongoError as error:
            raise StoreError(f"{self.url}: cannot create a MongoDB client: {error}") from None
        try:
            self._db = self._client[parsed["database"]]
            self._init_schema()
        except BaseException:
            self._client.close()
            raise

    def _errors(self, action: str):
        return _MongoErrors(self.url, action)

    def _init_schema(self) -> None:
        with self._errors("connecting"):
            self._client.admin.command("ping")
        with self._errors("creating the schema"):
            if self.mode == "w":
                for name in COLLECTIONS:
                    self._db.drop_collection(name)
            if self.mode != "r":
                self._db.nodes.create_index([("z", 1), ("y", 1), ("x", 1)])
                self._db.nodes.create_index("block")
                self._db.edges.create_index([("u", 1), ("v", 1)], unique=True)
                self._db.edges.create_index([("block", 1), ("crossing", 1)])
                try:
                    self._db.store_info.insert_one(
                        {"_id": "schema", "version": self.schema_version, "histogram_bins": self.histogram_bins}
                    )
                except pymongo.errors.DuplicateKeyError:
                    pass  # created before (by this run's other workers or an earlier run); checked below
            info = self._db.store_info.find_one({"_id": "schema"})
        if info is None:
            raise StoreError(f"{self.url}: no affcons RAG store in database {self._db.name!r} (mode 'r')")
        self._check_store_info(info.get("version"), info.get("histogram_bins"))

    # ---------------------------------------------------------------------------------------------------- writes

    def _replace(self, collection, block: int, documents, what: str, key_of, where: dict | None = None) -> None:
        """Delete block's documents (those matching ``where`` too), then insert ``documents`` in unordered batches
        of ``batch_size``."""
        with self._errors(f"writing {what} of block {block}"):
            collection.delete_many({"block": block, **(where or {})})
            for chunk in batched(documents, self.batch_size):
                try:
                    collection.insert_many(chunk, ordered=False)
                except pymongo.errors.BulkWriteError as error:
                    duplicates = [e for e in error.details.get("writeErrors", []) if e.get("code") == DUPLICATE_KEY]
                    if not duplicates:
                        raise
                    key = key_of(duplicates[0]["op"])
                    owner = collection.find_one(key, {"block": 1})
                    values = [str(value) for value in key.values()]
                    label = values[0] if len(values) == 1 else f"({', '.join(values)})"
                    raise StoreError(
                        f"{self.url}: block {block}: {what[:-1]} {label} is already stored by block "
                        f"{None if owner is None else owner['block']}"
                    ) from None

    def _replace_nodes(self, block, ids, position, size) -> None:
        documents = (
            {"_id": i, "z": z, "y": y, "x": x, "size": s, "block": block}
            for i, (z, y, x), s in zip(ids.tolist(), position.tolist(), size.tolist())
        )
        self._replace(self._db.nodes, block, documents, "nodes", lambda doc: {"_id": doc["_id"]})

    def _replace_edges(
        self, block, u, v, affinity_sum, count, histogram, linked, quantised, crossing, replaced
    ) -> None:
        documents = (
            {"u": a, "v": b, "sum": s, "count": n, "hist": h, "linked": k, "qsum": q, "crossing": c, "block": block}
            for a, b, s, n, h, k, q, c in zip(
                u.tolist(),
                v.tolist(),
                affinity_sum.tolist(),
                count.tolist(),
                histogram_rows(histogram),
                linked.tolist(),
                quantised.tolist(),
                crossing.tolist(),
            )
        )
        where = None if replaced is None else {"crossing": replaced}
        self._replace(self._db.edges, block, documents, "edges", lambda doc: {"u": doc["u"], "v": doc["v"]}, where)

    def _set_meta_text(self, key, text) -> None:
        with self._errors(f"writing meta {key!r}"):
            self._db.meta.replace_one({"_id": key}, {"_id": key, "value": text}, upsert=True)

    # ----------------------------------------------------------------------------------------------------- reads

    @staticmethod
    def _filter(bounds: Bounds | None) -> dict:
        query = {}
        for axis, (begin, end) in zip("zyx", bounds or ()):
            condition = {}
            if begin is not None:
                condition["$gte"] = begin
            if end is not None:
                condition["$lt"] = end
            if condition:
                query[axis] = condition
        return query

    def _node_batches(self, query: dict, action: str) -> Iterator[tuple]:
        with self._errors(action):
            cursor = self._db.nodes.find(query, {"z": 1, "y": 1, "x": 1, "size": 1}, batch_size=self.batch_size)
            for documents in batched(cursor, self.batch_size):
                yield (
                    np.array([d["_id"] for d in documents], np.int64),
                    np.array([(d["z"], d["y"], d["x"]) for d in documents], np.float64).reshape(-1, 3),
                    np.array([d["size"] for d in documents], np.int64),
                )

    def _read_node_batches(self, bounds) -> Iterator[tuple]:
        yield from self._node_batches(self._filter(bounds), "reading nodes")

    def _all_node_ids(self) -> np.ndarray:
        with self._errors("reading node ids"):
            cursor = self._db.nodes.find({}, {"_id": 1}, batch_size=self.batch_size)
            return np.array([d["_id"] for d in cursor], np.int64)

    def _read_block_node_batches(self, blocks) -> Iterator[tuple]:
        yield from self._node_batches({"block": {"$in": blocks}}, "reading the nodes of blocks")

    def _read_block_edge_batches(self, blocks, crossing) -> Iterator[tuple]:
        with self._errors("reading the edges of blocks"):
            yield from self._edge_batches({"block": {"$in": blocks}, "crossing": bool(crossing)})

    def _node_blocks(self, ids) -> tuple[np.ndarray, np.ndarray]:
        with self._errors("looking up node blocks"):
            documents = list(self._db.nodes.find({"_id": {"$in": ids.tolist()}}, {"block": 1}))
        return (
            np.array([d["_id"] for d in documents], np.int64),
            np.array([d["block"] for d in documents], np.int64),
        )

    def _block_node_ids(self, block) -> np.ndarray:
        with self._errors(f"writing edges of block {block}"):
            return np.array([d["_id"] for d in self._db.nodes.find({"block": block}, {"_id": 1})], np.int64)

    def _edge_batches(self, query: dict) -> Iterator[tuple]:
        cursor = self._db.edges.find(
            query,
            {"_id": 0, "u": 1, "v": 1, "sum": 1, "count": 1, "hist": 1, "linked": 1, "qsum": 1},
            batch_size=self.batch_size,
        )
        for documents in batched(cursor, self.batch_size):
            yield (
                np.array([d["u"] for d in documents], np.int64),
                np.array([d["v"] for d in documents], np.int64),
                np.array([d["sum"] for d in documents], np.float64),
                np.array([d["count"] for d in documents], np.int64),
                histogram_from_rows([bytes(d["hist"]) for d in documents], self.histogram_bins, self.url),
                np.array([d["linked"] for d in documents], np.int64),
                np.array([d["qsum"] for d in documents], np.int64),
            )

    def _read_edge_batches(self, bounds) -> Iterator[tuple]:
        with self._errors("reading edges"):
            if bounds is None:
                yield from self._edge_batches({})
                return
            cursor = self._db.nodes.find(self._filter(bounds), {"_id": 1}, batch_size=self.batch_size)
            ids = sorted(d["_id"] for d in cursor)
            for chunk in batched(ids, self.batch_size):
                yield from self._edge_batches({"u": {"$in": chunk}})

    def _count(self, table) -> int:
        with self._errors(f"counting {table}"):
            return self._db[table].count_documents({})

    def _get_meta_text(self, key) -> str | None:
        with self._errors(f"reading meta {key!r}"):
            document = self._db.meta.find_one({"_id": key})
        return None if document is None else document["value"]

    def _close(self) -> None:
        self._client.close()


class _MongoErrors(BackendErrors):
    """Turn pymongo errors into StoreError naming the URL and the action."""

    def translate(self, error: BaseException) -> None:
        if isinstance(error, pymongo.errors.PyMongoError):
            detail = str(error).split(", Topology Description")[0]  # pymongo appends the whole topology
            if len(detail) > 400:
                detail = detail[:400] + " ..."
            raise StoreError(f"{self.url}: {self.action} failed: {type(error).__name__}: {detail}") from None
