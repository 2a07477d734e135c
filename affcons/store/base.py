"""The RAG graph store interface: :class:`RagStore`, shared by the SQLite and MongoDB backends.

The public methods live here and do everything that does not depend on the backend: argument checks, the uint64 <->
int64 id conversion, ROI bounds, sorting of results, the read-only and closed states. A backend implements the
``_``-prefixed abstract methods on prepared int64/float64 columns. Design: ``docs/design/graph-store.md``.

Contract of the writes: ``write_nodes(block_id, nodes)`` and ``write_edges(block_id, edges)`` *replace* everything
that block wrote before (delete-then-insert keyed by block id), so a retried block never leaves a row twice, and a
retry after a partial write ends with exactly the full set. Each node id and each edge (u, v) belongs to one block;
writing it from another block is refused, naming the owner (SQLite, which stores a block's edges as one row per
part, checks the blocks that own the edge's endpoints on write, and any pair stored twice when it reads the table).

Block reads (:meth:`RagStore.read_block_nodes`, :meth:`RagStore.read_block_edges`,
:meth:`RagStore.read_face_edges`) find a node's block by the block that wrote it. They rely on the edges step's
contract: an edge is written by the block of one of its endpoints. When an edge is written, it is marked
``crossing`` unless both endpoints are nodes the writing block has already stored (the fragments step runs first);
an index on (block, crossing) makes a block's internal edges and its crossing edges two index ranges, so the reads
cost what the blocks hold, not what the store holds. A crossing edge's other endpoint is looked up by node id.
"""

import itertools
import json
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import numpy as np

from affcons.errors import StoreError
from affcons.secrets import redact
from affcons.segment.tables import ID_DTYPE, EdgeTable, NodeTable

MODES = ("r", "a", "w")
SCHEMA_VERSION = 3  # 2: edges carry ``linked`` (face stitching); 3: ``quantised_sum`` and the ``crossing`` flag
DEFAULT_BATCH_SIZE = 1000
#: What :meth:`RagStore.write_edges` replaces of a block's edges.
EDGE_PARTS = ("all", "internal", "crossing")
MAX_INT64 = 2**63 - 1

# (begin, end) in nm per axis (z, y, x); None where the ROI is unbounded along that side.
Bounds = tuple[tuple[float | None, float | None], ...]


def batched(iterable: Iterable, n: int) -> Iterator[list]:
    """Lists of up to ``n`` consecutive items of ``iterable``."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, n)):
        yield chunk


def histogram_rows(histogram: np.ndarray) -> list[bytes]:
    """One ``bytes`` per row of a uint32[E, B] histogram: B little-endian uint32 (4 B bytes; empty when B = 0)."""
    data = np.ascontiguousarray(histogram, dtype="<u4")
    width = 4 * data.shape[1]
    buffer = data.tobytes()
    return [buffer[i : i + width] for i in range(0, len(buffer), width)] if width else [b""] * len(data)


def histogram_from_rows(rows: list[bytes], bins: int, where: str) -> np.ndarray:
    """Inverse of :func:`histogram_rows`: uint32[len(rows), bins]; a row of another length is a StoreError."""
    if bins == 0:
        return np.zeros((len(rows), 0), np.uint32)
    buffer = b"".join(rows)
    if len(buffer) != 4 * bins * len(rows) or any(len(row) != 4 * bins for row in rows):
        raise StoreError(f"{where}: stored edge histograms do not have {bins} uint32 bins each")
    return np.frombuffer(buffer, dtype="<u4").reshape(len(rows), bins).astype(np.uint32)


class BackendErrors:
    """``with BackendErrors(url, action):`` turns a backend's exceptions into :class:`StoreError` naming the URL and
    the action; a backend implements :meth:`translate` (raise for the errors it knows, return for the others)."""

    def __init__(self, url: str, action: str):
        self.url, self.action = url, action

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            self.translate(exc)
        return False

    def translate(self, error: BaseException) -> None:
        raise NotImplementedError


class RagStore(ABC):
    """A region adjacency graph (fragments and their edge statistics) in a database, written block by block.

    Open one with :func:`affcons.store.open_store`; one store object per process (open it in each worker). Use as a
    context manager or call :meth:`close`. Every failure is a :class:`~affcons.errors.StoreError` naming the URL.

    Attributes: ``url`` (password redacted), ``mode`` ('r', 'a' or 'w'), ``histogram_bins`` (B of every stored
    edge), ``batch_size`` (rows per bulk write / read batch).
    """

    #: The layout version this backend reads and writes (recorded in the store when it is created).
    schema_version = SCHEMA_VERSION

    def __init__(self, url: str, mode: str, histogram_bins: int, batch_size: int):
        self.url = redact(url)
        if mode not in MODES:
            raise StoreError(f"{self.url}: mode must be one of {MODES}, got {mode!r}")
        if isinstance(histogram_bins, bool) or not isinstance(histogram_bins, int | np.integer) or histogram_bins < 0:
            raise StoreError(f"{self.url}: histogram_bins must be an integer >= 0, got {histogram_bins!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise StoreError(f"{self.url}: batch_size must be an integer >= 1, got {batch_size!r}")
        self.mode = mode
        self.histogram_bins = int(histogram_bins)
        self.batch_size = int(batch_size)
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, mode={self.mode!r}, histogram_bins={self.histogram_bins})"

    def __enter__(self) -> "RagStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------------- writes

    def write_nodes(self, block_id: int, nodes: NodeTable) -> None:
        """Store the fragments of block ``block_id``, replacing whatever that block wrote before.

        ``nodes.ids`` must be unique and < 2^63, positions (z, y, x) in nm finite. An id stored by another block is
        refused (StoreError naming the id and that block).
        """
        block = self._writable_block(block_id)
        if not isinstance(nodes, NodeTable):
            raise StoreError(f"{self.url}: write_nodes needs a NodeTable, got {type(nodes).__name__}")
        ids = self._to_int64(nodes.ids, "node id", block)
        size = self._to_int64(nodes.size, "node size", block)
        if len(np.unique(ids)) != len(ids):
            raise StoreError(f"{self.url}: block {block}: the NodeTable holds duplicate node ids")
        if not np.isfinite(nodes.position).all():
            raise StoreError(f"{self.url}: block {block}: node positions must be finite")
        self._replace_nodes(block, ids, nodes.position, size)

    def write_edges(self, block_id: int, edges: EdgeTable, part: str = "all") -> None:
        """Store the edges of block ``block_id``, replacing whatever that block wrote before (of ``part``).

        Rows need ``u < v < 2^63``, no (u, v) twice (use :meth:`EdgeTable.combine`), finite sums and
        ``edges.histogram_bins == self.histogram_bins``. An edge stored by another block is refused (StoreError
        naming the edge and that block). For the block reads, one endpoint of each edge should be a node of this
        block; an edge is stored as *crossing* unless both endpoints are nodes this block has already written.
        ``part``: ``all`` replaces every edge of the block; ``internal`` / ``crossing`` replace only the block's
        internal / crossing edges and refuse a row of the other kind (the blockwise fragments step writes a block's
        internal edges, the edges step its crossing ones).
        """
        if part not in EDGE_PARTS:
            raise StoreError(f"{self.url}: part must be one of {', '.join(EDGE_PARTS)}, got {part!r}")
        block = self._writable_block(block_id)
        if not isinstance(edges, EdgeTable):
            raise StoreError(f"{self.url}: write_edges needs an EdgeTable, got {type(edges).__name__}")
        if edges.histogram_bins != self.histogram_bins:
            raise StoreError(
                f"{self.url}: block {block}: edges have {edges.histogram_bins} histogram bins, the store keeps "
                f"{self.histogram_bins}"
            )
        u = self._to_int64(edges.u, "edge u", block)
        v = self._to_int64(edges.v, "edge v", block)
        count = self._to_int64(edges.count, "edge count", block)
        linked = self._to_int64(edges.linked, "edge linked count", block)
        quantised = self._to_int64(edges.quantised_sum, "edge quantised sum", block)
        if (u >= v).any():
            i = int(np.flatnonzero(u >= v)[0])
            raise StoreError(f"{self.url}: block {block}: edge ({u[i]}, {v[i]}) does not have u < v")
        if len(edges) > 1:
            order = np.lexsort((v, u))
            same = (u[order][1:] == u[order][:-1]) & (v[order][1:] == v[order][:-1])
            if same.any():
                i = order[int(np.flatnonzero(same)[0])]
                raise StoreError(
                    f"{self.url}: block {block}: edge ({u[i]}, {v[i]}) appears twice; combine() the table first"
                )
        if not np.isfinite(edges.affinity_sum).all():
            raise StoreError(f"{self.url}: block {block}: edge affinity sums must be finite")
        own = self._block_node_ids(block)
        crossing = ~(np.isin(u, own) & np.isin(v, own))
        if part != "all":
            wrong = np.flatnonzero(crossing != (part == "crossing"))
            if len(wrong):
                i = int(wrong[0])
                kind = "crossing" if crossing[i] else "internal"
                raise StoreError(f"{self.url}: block {block}: edge ({u[i]}, {v[i]}) is {kind}, not {part}")
        replaced = None if part == "all" else part == "crossing"
        self._replace_edges(
            block, u, v, edges.affinity_sum, count, edges.histogram, linked, quantised, crossing, replaced
        )

    def set_meta(self, key: str, value: dict) -> None:
        """Store the JSON-serialisable mapping ``value`` under ``key`` (e.g. the run config fingerprint)."""
        self._check_open()
        self._check_writable()
        if not isinstance(key, str) or not key:
            raise StoreError(f"{self.url}: meta key must be a non-empty string, got {key!r}")
        if not isinstance(value, dict):
            raise StoreError(f"{self.url}: meta {key!r} must be a dict, got {type(value).__name__}")
        try:
            text = json.dumps(value, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise StoreError(f"{self.url}: meta {key!r} is not JSON-serialisable: {error}") from None
        self._set_meta_text(key, text)

    # ----------------------------------------------------------------------------------------------------- reads

    def read_nodes(self, roi=None) -> NodeTable:
        """Nodes whose position lies in ``roi`` (a 3-D ``funlib.geometry.Roi`` in nm, half-open; None: all),
        sorted by id."""
        self._check_open()
        return _node_table(list(self._read_node_batches(self._bounds(roi))))

    def read_node_ids(self) -> np.ndarray:
        """The ids of all stored nodes, sorted (uint64): what an agglomeration needs of the nodes."""
        self._check_open()
        return np.sort(self._all_node_ids()).astype(ID_DTYPE)

    def read_edges(self, roi=None) -> EdgeTable:
        """Edges whose ``u`` node lies in ``roi`` (3-D ``funlib.geometry.Roi`` in nm; None: all edges, also those
        whose nodes were never written), sorted by (u, v)."""
        self._check_open()
        return self._edge_table(list(self._read_edge_batches(self._bounds(roi))))

    def read_block_nodes(self, blocks) -> NodeTable:
        """The nodes written by the blocks ``blocks`` (block ids), sorted by id."""
        self._check_open()
        blocks = self._block_list(blocks)
        return _node_table(
            [b for chunk in batched(blocks, self.batch_size) for b in self._read_block_node_batches(chunk)]
        )

    def read_block_edges(self, blocks) -> EdgeTable:
        """The edges whose two endpoints are nodes written by blocks in ``blocks``, sorted by (u, v): a block's (or
        a set of blocks') own RAG. Reads the internal edges of those blocks and their crossing edges."""
        self._check_open()
        blocks = self._block_list(blocks)
        internal = [
            b for chunk in batched(blocks, self.batch_size) for b in self._read_block_edge_batches(chunk, False)
        ]
        crossing = self._edge_table(
            [b for chunk in batched(blocks, self.batch_size) for b in self._read_block_edge_batches(chunk, True)]
        )
        block_u, block_v = self._endpoint_blocks(crossing)
        keep = np.isin(block_u, blocks) & np.isin(block_v, blocks)
        return EdgeTable.concatenate([self._edge_table(internal), crossing.rows(keep)], self.histogram_bins).combine()

    def read_face_edges(self, pairs) -> EdgeTable:
        """The edges between the blocks of each pair in ``pairs`` (int[P, 2] of block ids, either order): one
        endpoint a node of one block, the other a node of the other. Reads the crossing edges of the blocks named
        in ``pairs`` only, so a face costs what the blocks' faces hold. Sorted by (u, v)."""
        self._check_open()
        try:
            pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        except (TypeError, ValueError, OverflowError):
            raise StoreError(f"{self.url}: pairs must be an int array of shape (P, 2), got {pairs!r}") from None
        blocks = self._block_list(pairs.ravel())
        crossing = self._edge_table(
            [b for chunk in batched(blocks, self.batch_size) for b in self._read_block_edge_batches(chunk, True)]
        )
        block_u, block_v = self._endpoint_blocks(crossing)
        wanted = np.sort(pairs, axis=1)
        found = np.stack([np.minimum(block_u, block_v), np.maximum(block_u, block_v)], axis=1)
        _, label = np.unique(np.concatenate([wanted, found]), axis=0, return_inverse=True)
        return crossing.rows(np.isin(label.ravel()[len(wanted) :], label.ravel()[: len(wanted)]))

    def count_nodes(self) -> int:
        """Number of stored nodes."""
        self._check_open()
        return self._count("nodes")

    def count_edges(self) -> int:
        """Number of stored edges."""
        self._check_open()
        return self._count("edges")

    def get_meta(self, key: str) -> dict | None:
        """The mapping stored under ``key`` by :meth:`set_meta`, or None."""
        self._check_open()
        text = self._get_meta_text(key)
        return None if text is None else json.loads(text)

    def close(self) -> None:
        """Release the connection; further calls raise StoreError. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._close()

    # ---------------------------------------------------------------------------------------------------- checks

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.url}: the store was opened read-only (mode 'r')")

    def _writable_block(self, block_id) -> int:
        self._check_open()
        self._check_writable()
        try:
            block = operator.index(block_id)
        except TypeError:
            raise StoreError(f"{self.url}: block_id must be an integer, got {block_id!r}") from None
        if not 0 <= block <= MAX_INT64:
            raise StoreError(f"{self.url}: block_id must lie in [0, 2^63), got {block}")
        return block

    def _to_int64(self, values: np.ndarray, what: str, block: int) -> np.ndarray:
        """uint64 -> int64 without loss; a value >= 2^63 (which the databases cannot hold) is a StoreError."""
        if len(values) and values.max() > MAX_INT64:
            raise StoreError(
                f"{self.url}: block {block}: {what} {int(values.max())} is >= 2^63; the store keeps signed 64-bit "
                "integers"
            )
        return values.astype(np.int64)

    def _block_list(self, blocks) -> list[int]:
        """Sorted unique block ids as Python ints; anything else is a StoreError."""
        try:
            array = np.unique(np.asarray(blocks, dtype=np.int64).ravel())
        except (TypeError, ValueError, OverflowError):
            raise StoreError(f"{self.url}: block ids must be integers, got {blocks!r}") from None
        if len(array) and array.min() < 0:
            raise StoreError(f"{self.url}: block ids must lie in [0, 2^63), got {int(array.min())}")
        return array.tolist()

    def _edge_table(self, batches: list[tuple]) -> EdgeTable:
        """Batches of edge columns -> an EdgeTable sorted by (u, v)."""
        if not batches:
            return EdgeTable.empty(self.histogram_bins)
        u = np.concatenate([b[0] for b in batches])
        v = np.concatenate([b[1] for b in batches])
        order = np.lexsort((v, u))
        twice = np.flatnonzero((u[order][1:] == u[order][:-1]) & (v[order][1:] == v[order][:-1]))
        if len(twice):
            i = order[twice[0]]
            raise StoreError(
                f"{self.url}: edge ({u[i]}, {v[i]}) is stored twice (by two blocks); re-run the step that wrote the "
                "edges into a fresh store"
            )
        return EdgeTable(
            u[order].astype(ID_DTYPE),
            v[order].astype(ID_DTYPE),
            np.concatenate([b[2] for b in batches])[order],
            np.concatenate([b[3] for b in batches])[order].astype(np.uint64),
            np.concatenate([b[4] for b in batches])[order],
            np.concatenate([b[5] for b in batches])[order].astype(np.uint64),
            np.concatenate([b[6] for b in batches])[order].astype(np.uint64),
        )

    def _endpoint_blocks(self, edges: EdgeTable) -> tuple[np.ndarray, np.ndarray]:
        """The block that wrote each endpoint's node (int64, -1 for an endpoint whose node is not stored)."""
        owners = self._node_owners(np.concatenate([edges.u, edges.v]).astype(np.int64))
        return owners[: len(edges)], owners[len(edges) :]

    def _node_owners(self, ids: np.ndarray) -> np.ndarray:
        """The block that wrote each node of int64 ``ids`` (-1 where no block did), looked up in batches."""
        unique = np.unique(ids)
        blocks = np.full(len(unique), -1, np.int64)
        for start in range(0, len(unique), self.batch_size):
            found, block = self._node_blocks(unique[start : start + self.batch_size])
            blocks[np.searchsorted(unique, found)] = block
        return blocks[np.searchsorted(unique, ids)]

    def _bounds(self, roi) -> Bounds | None:
        if roi is None:
            return None
        try:
            dims, begin, end = roi.dims, roi.begin, roi.end
        except AttributeError:
            raise StoreError(f"{self.url}: roi must be a funlib.geometry.Roi or None, got {roi!r}") from None
        if dims != 3:
            raise StoreError(f"{self.url}: roi must be 3-D (z, y, x in nm), got {roi}")

        def bound(value):
            return None if value is None or math.isinf(value) else float(value)

        return tuple((bound(b), bound(e)) for b, e in zip(begin, end))

    def _check_store_info(self, version, histogram_bins) -> None:
        """Refuse a store of another schema version or histogram width (as recorded when it was created)."""
        if version != self.schema_version:
            raise StoreError(f"{self.url}: store schema version {version}, this affcons reads {self.schema_version}")
        if histogram_bins != self.histogram_bins:
            raise StoreError(
                f"{self.url}: the store keeps {histogram_bins} histogram bins per edge, opened with "
                f"histogram_bins={self.histogram_bins}"
            )

    # ------------------------------------------------------------------------------------------------- backends

    @abstractmethod
    def _replace_nodes(self, block: int, ids: np.ndarray, position: np.ndarray, size: np.ndarray) -> None:
        """Delete block's nodes, insert int64 ``ids`` [N], float64 ``position`` [N, 3] and int64 ``size`` [N]."""

    @abstractmethod
    def _replace_edges(
        self, block: int, u, v, affinity_sum, count, histogram, linked, quantised, crossing, replaced: bool | None
    ) -> None:
        """Delete block's edges (those whose crossing flag is ``replaced``; all if None), insert int64 u, v [E],
        float64 sum [E], int64 count [E], uint32 histogram [E, B], int64 linked [E], int64 quantised sum [E], bool
        crossing [E]."""

    @abstractmethod
    def _read_node_batches(self, bounds: Bounds | None) -> Iterator[tuple]:
        """Batches of (int64 ids, float64 position [n, 3], int64 size)."""

    @abstractmethod
    def _all_node_ids(self) -> np.ndarray:
        """int64 ids of every stored node."""

    @abstractmethod
    def _read_edge_batches(self, bounds: Bounds | None) -> Iterator[tuple]:
        """Batches of (int64 u, int64 v, float64 sum, int64 count, uint32 histogram [n, B], int64 linked, int64
        quantised sum)."""

    @abstractmethod
    def _read_block_node_batches(self, blocks: list[int]) -> Iterator[tuple]:
        """Batches of nodes written by ``blocks``, as :meth:`_read_node_batches`."""

    @abstractmethod
    def _read_block_edge_batches(self, blocks: list[int], crossing: bool) -> Iterator[tuple]:
        """Batches of the edges written by ``blocks`` with this crossing flag, as :meth:`_read_edge_batches`."""

    @abstractmethod
    def _node_blocks(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids, their blocks), int64, for the stored nodes among ``ids`` (int64, at most batch_size)."""

    @abstractmethod
    def _block_node_ids(self, block: int) -> np.ndarray:
        """int64 ids of the nodes written by ``block``."""

    @abstractmethod
    def _count(self, table: str) -> int:
        """Rows in 'nodes' or 'edges'."""

    @abstractmethod
    def _set_meta_text(self, key: str, text: str) -> None: ...

    @abstractmethod
    def _get_meta_text(self, key: str) -> str | None: ...

    @abstractmethod
    def _close(self) -> None: ...


def _node_table(batches: list[tuple]) -> NodeTable:
    """Batches of node columns -> a NodeTable sorted by id."""
    if not batches:
        return NodeTable.empty()
    ids = np.concatenate([b[0] for b in batches])
    order = np.argsort(ids, kind="stable")
    return NodeTable(
        ids[order].astype(ID_DTYPE),
        np.concatenate([b[1] for b in batches])[order],
        np.concatenate([b[2] for b in batches])[order].astype(np.uint64),
    )
