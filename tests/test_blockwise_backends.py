"""The graph store backend does not change the result: SQLite and MongoDB (the nx-27017 wire server, or
``$AFFCONS_TEST_MONGODB_URL``) give byte-identical outputs and the same merge tree, with quantile scoring (so edge
histograms travel through the store too), equal to the monolithic agglomeration of the same fragments (stitched by
the same face links)."""

import numpy as np
import pymongo
import zarr

from affcons.segment import MergeTree, agglomerate_fragments, apply_lookup
from affcons.synthetic import degraded_affinities
from blockwise.testing import chunk_digests, face_links_of_run, load_labels, run_cli, segment_argv, write_affinities
from tests.mongo_server import with_database

THRESHOLDS = (0.4, 0.6)


def test_sqlite_and_mongodb_backends_give_identical_results(tmp_path, mongodb_url):
    labels, voxel_size = load_labels("gala")
    labels = labels[:, :, :100]
    affs = degraded_affinities(labels, seed=2)
    path = str(tmp_path / "in.zarr" / "affs")
    write_affinities(path, affs, voxel_size, chunk_shape=(25, 50, 50))
    database = f"affcons_blockwise_{tmp_path.name[-20:].replace('-', '_')}"
    graphs = {"sqlite": f"sqlite:///{tmp_path / 'rag.db'}", "mongodb": with_database(mongodb_url, database)}
    outputs = {}
    for backend, graph in graphs.items():
        out = tmp_path / f"{backend}.zarr"
        argv = segment_argv(
            path,
            str(out),
            THRESHOLDS,
            (25, 50, 50),
            (8, 8, 8),
            workers=1,
            extra=["--graph", graph, "--scoring", "quantile50"],
        )
        assert run_cli(argv) == 0, backend
        outputs[backend] = out
    digests = {backend: chunk_digests(out) for backend, out in outputs.items()}
    assert digests["sqlite"] == digests["mongodb"] and len(digests["sqlite"]) > 8
    trees = {b: MergeTree.load(out.parent / f"{b}.affcons-run" / "merge_tree.npz") for b, out in outputs.items()}
    for key in ("ids", "kept", "absorbed", "score", "level"):
        assert np.array_equal(getattr(trees["sqlite"], key), getattr(trees["mongodb"], key)), key
    client = pymongo.MongoClient(mongodb_url, serverSelectionTimeoutMS=3000)
    try:
        client.drop_database(database)
    finally:
        client.close()
    fragments = zarr.open_array(str(outputs["mongodb"] / "fragments"))[:]
    reference = agglomerate_fragments(fragments, affs, "quantile50", links=face_links_of_run(outputs["mongodb"]))
    for threshold in THRESHOLDS:
        segmentation = zarr.open_array(str(outputs["mongodb"] / f"segmentation_{threshold:.2f}"))[:]
        assert np.array_equal(segmentation, apply_lookup(fragments, reference.ids, reference.lookup(threshold)))
