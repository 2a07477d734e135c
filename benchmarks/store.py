"""RAG store benchmark: edge write and read rates (edges/s) and bytes per edge, SQLite and MongoDB-wire, a
projection of the Kasthuri15 edge write time, and the time of the block reads (one block's nodes and edges, the
edges across its six faces) as the store grows from 32 to 1024 blocks (SQLite): they must not grow with it.

    .venv/bin/python benchmarks/store.py [--sqlite-edges 200000] [--mongo-edges 20000] [--mongodb-url URL]

Without ``--mongodb-url`` it starts ``nx-27017`` (next to ``sys.executable``), a pure-Python MongoDB-wire server on
SQLite: its numbers measure *the protocol stand-in*, not MongoDB. It also times a prototype of the alternative
design (one document per block holding binary edge columns) on the same server, for the ratio. Under 2 minutes.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pymongo
from bson import Binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from affcons.segment.hierarchy import face_pairs  # noqa: E402
from affcons.segment.tables import EdgeTable, NodeTable  # noqa: E402
from affcons.store import open_store  # noqa: E402
from tests.mongo_server import start_nx_27017  # noqa: E402

KASTHURI_EDGES = 4e8  # Kasthuri15-scale fragment RAG (docs: /work/shared/docs/mongodb.md)
ASSUMED_MONGODB_DOCS_PER_S = 1e5  # per real MongoDB server: an assumption from mongodb.md, not measured here
EDGES_PER_BLOCK = 5000


def edge_blocks(n_edges: int, bins: int, per_block: int = EDGES_PER_BLOCK) -> list[EdgeTable]:
    """Synthetic blocks of unique edges with ids near 2^40, random sums, counts and histograms."""
    rng = np.random.default_rng(0)
    blocks = []
    for start in range(0, n_edges, per_block):
        n = min(per_block, n_edges - start)
        u = np.uint64(2**40) + np.arange(start, start + n, dtype=np.uint64)
        blocks.append(
            EdgeTable(
                u,
                u + rng.integers(1, 1000, n, dtype=np.uint64),
                rng.random(n) * 100,
                rng.integers(1, 10**6, n),
                rng.integers(0, 2**16, (n, bins)),
            )
        )
    return blocks


def measure_store(url: str, n_edges: int, bins: int, batch_size: int = 1000) -> dict:
    """Write ``n_edges`` (blocks of EDGES_PER_BLOCK) into a fresh store at ``url``, read them back; edges/s."""
    blocks = edge_blocks(n_edges, bins)
    with open_store(url, "w", histogram_bins=bins, batch_size=batch_size) as store:
        start = time.perf_counter()
        for block_id, edges in enumerate(blocks):
            store.write_edges(block_id, edges)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        edges = store.read_edges()
        read_s = time.perf_counter() - start
        if len(edges) != n_edges:
            raise RuntimeError(f"{url}: read {len(edges)} edges, wrote {n_edges}")
    return {"write": n_edges / write_s, "read": n_edges / read_s}


def files_bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def measure_block_documents(server_url: str, database: str, n_edges: int) -> float:
    """Prototype of the alternative: one document per block with binary columns u, v (int64), sum (float64),
    count (int64); returns edges/s written."""
    client = pymongo.MongoClient(server_url)
    collection = client[database].edge_blocks
    collection.drop()
    blocks = edge_blocks(n_edges, 0)
    start = time.perf_counter()
    for block_id, edges in enumerate(blocks):
        collection.insert_one(
            {
                "_id": block_id,
                "n": len(edges),
                "u": Binary(edges.u.astype("<i8").tobytes()),
                "v": Binary(edges.v.astype("<i8").tobytes()),
                "sum": Binary(edges.affinity_sum.astype("<f8").tobytes()),
                "count": Binary(edges.count.astype("<i8").tobytes()),
            }
        )
    rate = n_edges / (time.perf_counter() - start)
    client.close()
    return rate


def grid_block(index: int, grid, nodes: int, edges: int) -> tuple[NodeTable, EdgeTable]:
    """Block ``index`` of a C-order ``grid``: ``nodes`` nodes and about ``edges`` edges, a third of them to nodes of
    its lower face neighbours (written by this block, as the edges step writes face edges)."""
    rng = np.random.default_rng(index)
    ids = np.uint64(index * 100_000) + np.arange(1, nodes + 1, dtype=np.uint64)
    position = np.unravel_index(index, grid)
    stride = np.cumprod((1,) + tuple(grid[::-1]))[:-1][::-1]  # C-order strides (z, y, x)
    lower = [index - int(stride[a]) for a in range(3) if position[a] > 0]
    u = rng.choice(ids, edges)
    v = rng.choice(ids, edges)
    if lower:
        across = rng.random(edges) < 1 / 3
        neighbour = np.array(lower)[rng.integers(0, len(lower), across.sum())]
        v[across] = neighbour.astype(np.uint64) * np.uint64(100_000) + rng.integers(1, nodes + 1, across.sum()).astype(
            np.uint64
        )
    keep = u != v
    pairs = np.unique(np.stack([np.minimum(u, v)[keep], np.maximum(u, v)[keep]]), axis=1)
    n = pairs.shape[1]
    table = EdgeTable(
        pairs[0], pairs[1], rng.random(n), np.ones(n, np.uint64), np.zeros((n, 0)), None, rng.integers(0, 255, n)
    )
    centre = rng.uniform(0, 1, (nodes, 3))
    return NodeTable(ids, centre, np.ones(nodes, np.uint64)), table


def measure_block_reads(path: Path, grid, nodes: int = 300, edges: int = 1000, repeats: int = 5) -> dict:
    """Write a grid of blocks into a fresh SQLite store; best-of time (s) of the block reads of a central block."""
    url = f"sqlite:///{path}"
    with open_store(url, "w") as store:
        for index in range(int(np.prod(grid))):
            block_nodes, block_edges = grid_block(index, grid, nodes, edges)
            store.write_nodes(index, block_nodes)
            store.write_edges(index, block_edges)
        centre = tuple(n // 2 for n in grid)
        index = int(np.ravel_multi_index(centre, grid))
        outer, _ = face_pairs(grid, centre, tuple(c + 1 for c in centre))
        timings = {"nodes": np.inf, "edges": np.inf, "faces": np.inf}
        for _ in range(repeats):
            for name, read in (
                ("nodes", lambda: store.read_block_nodes([index])),
                ("edges", lambda: store.read_block_edges([index])),
                ("faces", lambda: store.read_face_edges(outer)),
            ):
                start = time.perf_counter()
                result = read()
                timings[name] = min(timings[name], time.perf_counter() - start)
                timings[f"{name}_rows"] = len(result)
        timings["total_edges"] = store.count_edges()
    return timings


def hours(n_edges: float, rate: float) -> str:
    return f"{n_edges / rate / 3600:8.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite-edges", type=int, default=200_000, help="edges written to SQLite per run")
    parser.add_argument("--mongo-edges", type=int, default=20_000, help="edges written to the MongoDB-wire server")
    parser.add_argument("--mongodb-url", help="a real MongoDB (mongodb://host:port/?...) instead of nx-27017")
    args = parser.parse_args()
    rows = {}
    work = Path(tempfile.mkdtemp(prefix="affcons-store-bench-"))
    try:
        for bins in (0, 16):
            path = work / f"rag-{bins}.db"
            rates = measure_store(f"sqlite:///{path}", args.sqlite_edges, bins)
            rates["bytes"] = files_bytes([path, Path(f"{path}-wal")]) / args.sqlite_edges
            rows[f"SQLite file, B={bins}"] = rates

        server = None
        if args.mongodb_url:
            server_url, label = args.mongodb_url, "MongoDB (given URL)"
        else:
            try:
                server = start_nx_27017(work)
            except RuntimeError as error:
                raise SystemExit(f"{error}\n(or pass --mongodb-url)") from None
            server_url, label = f"mongodb://127.0.0.1:{server.port}/?directConnection=true", "nx-27017 stand-in"
        try:
            host = server_url.split("?")[0].rstrip("/")
            query = server_url.partition("?")[2]
            rates = measure_store(f"{host}/affcons_bench?{query}", args.mongo_edges, 0)
            block_rate = measure_block_documents(server_url, "affcons_bench_blocks", args.mongo_edges * 10)
        finally:
            if server is not None:
                server.stop()
        if server is not None:
            data = work / "data"
            rates["bytes"] = files_bytes(data.glob("affcons_bench.db*")) / args.mongo_edges
        else:
            rates["bytes"] = float("nan")
        rows[f"{label}, B=0"] = rates
    finally:
        shutil.rmtree(work, ignore_errors=True)

    block_reads = {}
    work = Path(tempfile.mkdtemp(prefix="affcons-store-bench-"))
    try:
        for grid in ((2, 4, 4), (4, 8, 8), (8, 8, 16)):
            block_reads[grid] = measure_block_reads(work / f"grid-{'x'.join(map(str, grid))}.db", grid)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    short = "nx-27017" if not args.mongodb_url else "MongoDB"
    print(f"RAG store benchmark on this machine: edges in blocks of {EDGES_PER_BLOCK}, bulk batches of 1000")
    print(
        f"{'backend':<40} {'edges':>8} {'write edges/s':>14} {'read edges/s':>13} {'bytes/edge':>11} "
        f"{'4e8 edges write':>16}"
    )
    for name, r in rows.items():
        n = args.sqlite_edges if name.startswith("SQLite") else args.mongo_edges
        print(
            f"{name:<40} {n:>8,} {r['write']:>14,.0f} {r['read']:>13,.0f} {r['bytes']:>11.1f} "
            f"{hours(KASTHURI_EDGES, r['write']):>16}"
        )
    print(
        f"{short + ' per-block binary docs (proto)':<40} {args.mongo_edges * 10:>8,} {block_rate:>14,.0f} "
        f"{'-':>13} {'32.0*':>11} {hours(KASTHURI_EDGES, block_rate):>16}"
    )
    print("  * raw column bytes (u, v, sum, count); the prototype is not part of the store")
    print("  one run each, on a machine shared with other work: expect run-to-run spread of about 2x")
    per_edge = rows[f"{label}, B=0"]["write"]
    print(f"ratio per-block binary / per-edge documents, write, on {short}: {block_rate / per_edge:,.0f}x")
    print(
        f"ratio SQLite / {short} per-edge documents, write: "
        f"{rows['SQLite file, B=0']['write'] / rows[f'{label}, B=0']['write']:,.0f}x"
    )
    if not args.mongodb_url:
        print("NOTE: nx-27017 is a pure-Python protocol stand-in on SQLite; its rates say nothing about MongoDB.")
    print("\nBlock reads of the central block (SQLite, best of 5): they must not grow with the store")
    print(f"{'grid':>10} {'store edges':>12} | {'nodes':>12} {'own edges':>16} {'six faces':>16} | ratio to smallest")
    first = next(iter(block_reads.values()))
    for grid, r in block_reads.items():
        total = r["nodes"] + r["edges"] + r["faces"]
        print(
            f"{'x'.join(map(str, grid)):>10} {r['total_edges']:>12,} | "
            f"{r['nodes'] * 1e3:>6.2f} ms {r['nodes_rows']:>3} "
            f"{r['edges'] * 1e3:>6.2f} ms {r['edges_rows']:>5} {r['faces'] * 1e3:>6.2f} ms {r['faces_rows']:>5} | "
            f"{total / (first['nodes'] + first['edges'] + first['faces']):.2f}"
        )
    print(
        f"ASSUMPTION (not measured): a real MongoDB server inserts ~{ASSUMED_MONGODB_DOCS_PER_S:.0e} docs/s; "
        f"4e8 per-edge documents then take {hours(KASTHURI_EDGES, ASSUMED_MONGODB_DOCS_PER_S).strip()} per server "
        f"(~{KASTHURI_EDGES / ASSUMED_MONGODB_DOCS_PER_S:,.0f} s), before index build-up slows inserts."
    )


if __name__ == "__main__":
    main()
