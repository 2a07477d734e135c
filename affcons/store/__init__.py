"""The RAG graph store: fragments and edge statistics of a volume, written block by block by the blockwise steps.

``open_store(url)`` picks the backend from the URL scheme:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: one file, embedded (the default for local runs);
  several worker processes on one machine may write at once.
- ``mongodb://host:port/dbname[?options]`` (or ``mongodb+srv://``): a MongoDB server, for workers on many machines.

See :class:`~affcons.store.base.RagStore` for the methods and ``docs/design/graph-store.md`` for the design.
"""

from affcons.errors import StoreError
from affcons.store.base import DEFAULT_BATCH_SIZE, RagStore, redact

SCHEMES = ("sqlite", "mongodb", "mongodb+srv")

__all__ = ["RagStore", "open_store", "SCHEMES"]


def open_store(
    url: str,
    mode: str = "a",
    histogram_bins: int = 0,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_ms: int | None = None,
) -> RagStore:
    """Open the RAG store at ``url``.

    ``mode``: 'r' read only, the store must exist; 'a' create if missing; 'w' drop existing content.
    ``histogram_bins``: B, the histogram bins of every edge; must equal what the store was created with.
    ``batch_size``: documents/rows per bulk write call and per read batch.
    ``timeout_ms``: MongoDB server selection and connect timeout (default 3000 ms, else the URL's options); SQLite
    busy timeout, how long a writer waits for another process's transaction (default 60000 ms).
    Unknown schemes, unreachable servers and unwritable paths are StoreErrors naming the URL.
    """
    if not isinstance(url, str):
        raise StoreError(f"store URL must be a string, got {type(url).__name__}: {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else None
    if scheme == "sqlite":
        from affcons.store.sqlite import SQLiteRagStore

        return SQLiteRagStore(url, mode, histogram_bins, batch_size=batch_size, timeout_ms=timeout_ms)
    if scheme in ("mongodb", "mongodb+srv"):
        from affcons.store.mongo import MongoRagStore

        return MongoRagStore(url, mode, histogram_bins, batch_size=batch_size, timeout_ms=timeout_ms)
    raise StoreError(
        f"{redact(url)}: unknown store URL scheme {scheme!r}; supported: {', '.join(s + '://' for s in SCHEMES)} "
        "(e.g. sqlite:///runs/rag.db or mongodb://localhost:27017/affcons)"
    )
