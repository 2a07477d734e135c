"""Blockwise must equal monolithic (real data, degraded ground-truth affinities, real daisy workers).

1. For the same fragments, the blockwise segmentation at every threshold is *identical* (same ids, hence the same
   partition) to the monolithic agglomeration of those fragments, :func:`affcons.segment.agglomerate_fragments`,
   given the face-link bits the run recorded (so that the same face-cut fragments are stitched), for three block
   sizes: the stored RAG is exactly the whole volume's RAG and the merge tree does not depend on the block size.
2. End to end (blockwise fragments vs the monolithic watershed), VOI split + merge against the ground truth is
   within 0.01 of :func:`affcons.segment.segment_affinities` at every threshold. Without stitching, small blocks
   split more at a low threshold (0.3: +0.013 to +0.052 here); the stitched run is within 0.005.
"""

import json

import numpy as np
import pytest
import zarr

from affcons.affinities import affinities_to_float
from affcons.evaluate import evaluate
from affcons.segment import agglomerate_fragments, apply_lookup, segment_affinities
from affcons.synthetic import degraded_affinities
from blockwise.layout import RunDir, segment_run_dir
from blockwise.testing import face_links_of_run, load_labels, run_cli, same_partition, segment_argv, write_affinities

THRESHOLDS = (0.3, 0.5, 0.7)


@pytest.fixture(scope="module")
def gala(tmp_path_factory):
    """Gala FIB-SEM (50, 100, 200) at 10 nm: ground truth, float32 affinities on disk, monolithic segmentations."""
    labels, voxel_size = load_labels("gala")
    affs = degraded_affinities(labels, seed=0)
    path = str(tmp_path_factory.mktemp("gala") / "in.zarr" / "affs")
    write_affinities(path, affs, voxel_size, chunk_shape=(25, 50, 50))
    monolithic = segment_affinities(affs, THRESHOLDS, voxel_size=voxel_size)
    return {"labels": labels, "affs": affs, "path": path, "monolithic": monolithic}


@pytest.mark.parametrize(
    "block, context, workers",
    [((25, 50, 100), (16, 16, 16), 2), ((25, 100, 100), (16, 16, 16), 1), ((50, 50, 100), (8, 16, 16), 1)],
    ids=["25x50x100", "25x100x100", "50x50x100"],
)
def test_blockwise_equals_monolithic_agglomeration_and_voi(gala, block, context, workers, tmp_path):
    out = tmp_path / "out.zarr"
    assert run_cli(segment_argv(gala["path"], str(out), THRESHOLDS, block, context, workers=workers)) == 0
    fragments = zarr.open_array(str(out / "fragments"))[:]
    assert fragments.dtype == np.uint32 and (fragments != 0).all()  # every id of the run fits in 32 bits
    tree = agglomerate_fragments(fragments, gala["affs"], links=face_links_of_run(out))
    assert tree.num_stitches > 0, "block faces cut fragments here; some must be stitched"
    for threshold in THRESHOLDS:
        blockwise = zarr.open_array(str(out / f"segmentation_{threshold:.2f}"))[:]
        assert blockwise.dtype == fragments.dtype
        reference = apply_lookup(fragments, tree.ids, tree.lookup(threshold))
        assert np.array_equal(blockwise, reference), f"threshold {threshold}: differs from the monolithic agglomeration"
        assert same_partition(blockwise, reference)
        voi_blockwise = evaluate(blockwise, gala["labels"])["voi"]
        voi_monolithic = evaluate(gala["monolithic"][threshold], gala["labels"])["voi"]
        difference = voi_blockwise - voi_monolithic
        print(
            f"block {block} context {context} threshold {threshold}: VOI blockwise {voi_blockwise:.4f}, "
            f"monolithic {voi_monolithic:.4f}, difference {difference:+.4f}"
        )
        assert abs(difference) <= 0.01


def test_blockwise_equals_monolithic_on_anisotropic_uint8_isbi(tmp_path):
    """ISBI 2012 (10, 128, 128) at 50 x 4 x 4 nm, uint8 affinities, 2-D fragments per section, 2 x 2 x 2 blocks."""
    labels, voxel_size = load_labels("isbi")
    path = str(tmp_path / "in.zarr" / "affs")
    write_affinities(path, degraded_affinities(labels, seed=1), voxel_size, dtype=np.uint8, chunk_shape=(5, 64, 64))
    affs = affinities_to_float(zarr.open_array(path)[:])
    out = tmp_path / "out.zarr"
    argv = segment_argv(path, str(out), (0.5, 0.7), (5, 64, 64), (2, 16, 16), workers=1, extra=["--per-slice"])
    assert run_cli(argv) == 0
    fragments = zarr.open_array(str(out / "fragments"))[:]
    links = face_links_of_run(out)
    assert not (links & 0b001001).any(), "per-slice fragments are never linked along z"
    tree = agglomerate_fragments(fragments, affs, links=links)
    for threshold in (0.5, 0.7):
        blockwise = zarr.open_array(str(out / f"segmentation_{threshold:.2f}"))[:]
        assert np.array_equal(blockwise, apply_lookup(fragments, tree.ids, tree.lookup(threshold)))
    # per-slice fragments never cross a section
    for z in range(1, fragments.shape[0]):
        assert not np.intersect1d(np.unique(fragments[z - 1]), np.unique(fragments[z])).size
    # the fragments kernel's phases are in the summary, inside the step's compute time (each rounded to 1 ms)
    stage = json.loads(RunDir(segment_run_dir(out)).summary.read_text())["stages"]["fragments"]
    phases = {key for key in stage if key.startswith("compute_") and key != "compute_s"}
    kernel = {f"compute_{phase}_s" for phase in ("levels", "seeds", "flood", "links", "relabel", "nodes")}
    assert kernel <= phases
    assert 0 < sum(stage[key] for key in phases) <= stage["compute_s"] + 0.001 * len(phases)
