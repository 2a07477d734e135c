"""``blockwise.volumes.Box``: the workers' block I/O, on real zarr v3 arrays written by funlib.persistence, with and
without a leading channel axis, with a voxel size and an offset that are not 1 and 0."""

import pickle

import numpy as np
import pytest
from funlib.geometry import Roi

from affcons.errors import VolumeError
from affcons.io import create_volume, open_volume
from blockwise.volumes import box_for

VOXEL_SIZE = (50, 4, 4)
OFFSET = (100, 40, 8)
ROI = Roi(OFFSET, (400, 64, 48))  # 8 x 16 x 12 voxels


@pytest.fixture
def affs_path(tmp_path):
    path = f"{tmp_path}/out.zarr/affs"
    create_volume(path, ROI, VOXEL_SIZE, "uint8", num_channels=3, chunk_shape=(4, 8, 4))
    return path


def test_box_writes_and_reads_every_channel_of_a_channels_first_array(affs_path):
    box = pickle.loads(pickle.dumps(box_for(affs_path, OFFSET, VOXEL_SIZE, writable=True)))  # as a worker gets it
    block = Roi((300, 72, 24), (200, 16, 8))  # 4 x 4 x 2 voxels at voxel (4, 8, 4) of the array
    data = np.arange(3 * 4 * 4 * 2, dtype=np.uint8).reshape(3, 4, 4, 2) + 1
    box.write(block, data)
    box.close()

    array = open_volume(affs_path)
    assert array.shape == (3, 8, 16, 12) and array.roi == ROI
    np.testing.assert_array_equal(array[block], data)  # funlib.persistence finds it where Box put it
    whole = array[ROI]
    assert whole.sum() == data.astype(np.int64).sum()  # nothing written elsewhere
    np.testing.assert_array_equal(whole[:, 4:8, 8:12, 4:6], data)

    reader = box_for(affs_path, OFFSET, VOXEL_SIZE)
    np.testing.assert_array_equal(reader.read(block), data)
    np.testing.assert_array_equal(reader.read(block, channels=slice(1, 3)), data[1:])


def test_box_refuses_data_of_the_wrong_shape_or_outside_the_array(affs_path):
    box = box_for(affs_path, OFFSET, VOXEL_SIZE, writable=True)
    block = Roi((300, 72, 24), (200, 16, 8))
    with pytest.raises(VolumeError, match="shape"):
        box.write(block, np.ones((4, 4, 2), np.uint8))  # zarr would broadcast it over the channels
    with pytest.raises(VolumeError, match="shape"):
        box.write(block, np.ones((2, 4, 4, 2), np.uint8))
    with pytest.raises(VolumeError, match="outside"):
        box.write(Roi((0, 0, 0), (200, 16, 8)), np.ones((3, 4, 4, 2), np.uint8))
    assert open_volume(affs_path)[ROI].sum() == 0


def test_box_without_a_channel_axis(tmp_path):
    path = f"{tmp_path}/out.zarr/fragments"
    create_volume(path, ROI, VOXEL_SIZE, np.uint64, chunk_shape=(4, 8, 4))
    box = box_for(path, OFFSET, VOXEL_SIZE, writable=True)
    block = Roi((100, 40, 8), (200, 32, 16))
    data = np.arange(4 * 8 * 4, dtype=np.uint64).reshape(4, 8, 4)
    box.write(block, data)
    np.testing.assert_array_equal(open_volume(path)[block], data)
    np.testing.assert_array_equal(box.read(block), data)
    with pytest.raises(VolumeError, match="channel"):
        box.read(block, channels=slice(0, 1))


def test_a_written_block_of_fill_values_is_stored_and_reads_as_complete(affs_path):
    """A block of zeros (e.g. affinities predicted over blank resin) is a written chunk, not a missing one: a reader
    that requires complete data reads it instead of reporting lost chunks."""
    box = box_for(affs_path, OFFSET, VOXEL_SIZE, writable=True)
    block = Roi((100, 40, 8), (200, 32, 16))  # exactly chunk (0, 0, 0): 4 x 8 x 4 voxels
    box.write(block, np.zeros((3, 4, 8, 4), np.uint8))
    reader = box_for(affs_path, OFFSET, VOXEL_SIZE)
    reader.require_chunks = True
    assert reader.missing_chunks(reader.index(block)) == []
    np.testing.assert_array_equal(reader.read(block), 0)
    with pytest.raises(VolumeError, match="missing"):
        reader.read(Roi((300, 40, 8), (200, 32, 16)))  # chunk (1, 0, 0): never written


def test_a_read_only_box_with_a_chunk_cache_reads_what_zarr_reads_and_stays_within_its_bytes(tmp_path):
    """Overlapping reads with context (as neighbouring blocks make them) through the cache equal plain reads; the
    chunks shared with an earlier read are not decoded again; the cache never holds more than its bytes."""
    path = f"{tmp_path}/c.zarr/affs"
    roi = Roi(OFFSET, (16 * 50, 24 * 4, 20 * 4))  # 16 x 24 x 20 voxels
    create_volume(path, roi, VOXEL_SIZE, "uint8", num_channels=3, chunk_shape=(4, 8, 4))
    data = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 20), dtype=np.uint8)
    box_for(path, OFFSET, VOXEL_SIZE, writable=True).write(roi, data)
    plain = box_for(path, OFFSET, VOXEL_SIZE)
    cached = box_for(path, OFFSET, VOXEL_SIZE)
    cached.cache_bytes = 3 * 4 * 8 * 4 * 12  # twelve chunks
    blocks = [Roi((100 + 50 * z, 40 + 4 * y, 8 + 4 * x), (300, 40, 36)) for z in (0, 4) for y in (0, 6) for x in (0, 8)]
    for block in blocks:
        for channels in (slice(0, 3), slice(1, 2)):
            np.testing.assert_array_equal(cached.read(block, channels), plain.read(block, channels))
        assert cached._cache.bytes <= cached.cache_bytes
    np.testing.assert_array_equal(cached.read(roi), data)  # larger than the cache: still whole

    fresh = box_for(path, OFFSET, VOXEL_SIZE)
    fresh.cache_bytes = 10**9
    fresh.read(Roi((100, 40, 8), (400, 64, 36)))  # z 0-8, y 0-16, x 0-9: 2 x 2 x 3 chunks
    assert fresh._cache.decoded == 12
    fresh.read(Roi((100, 40, 24), (400, 64, 36)))  # x 4-13: chunks x 1-3, of which x 1-2 are cached
    assert fresh._cache.decoded == 16
