"""``blockwise.faces.FaceSections``: the sections the fragments step stores and the edges step reads back, on real
zarr, against slices of the whole volumes (blocks clipped at the volume's end; uint32 and uint64 ids; uint8, float16
and float32 affinities, whose bits must come back exactly)."""

import itertools

import numpy as np
import pytest

from blockwise.faces import FaceSections

VOLUME = (10, 13, 7)
BLOCK = (4, 5, 3)


@pytest.mark.parametrize(
    ("ids_dtype", "affs_dtype"), [(np.uint32, np.uint8), (np.uint64, np.float32), (np.uint32, np.float16)]
)
def test_each_face_slab_is_the_two_sections_of_the_volumes_and_the_links_volume_is_whole(
    tmp_path, ids_dtype, affs_dtype
):
    rng = np.random.default_rng(1)
    fragments = rng.integers(0, 2**31, VOLUME).astype(ids_dtype)
    if np.dtype(affs_dtype).kind == "f":
        affs = rng.random((3,) + VOLUME).astype(affs_dtype)
    else:
        affs = rng.integers(0, 256, (3,) + VOLUME).astype(affs_dtype)
    grid = tuple(-(-v // b) for v, b in zip(VOLUME, BLOCK))
    faces = FaceSections(tmp_path / "faces.zarr", grid, BLOCK, VOLUME)
    faces.create(ids_dtype, affs_dtype)
    links = np.zeros(VOLUME, np.uint8)
    blocks = {}
    for coords in itertools.product(*map(range, grid)):
        begin = tuple(c * b for c, b in zip(coords, BLOCK))
        box = tuple(slice(s, min(s + b, v)) for s, b, v in zip(begin, BLOCK, VOLUME))
        block_links = np.zeros(tuple(e.stop - e.start for e in box), np.uint8)  # bits on the faces only
        for axis in range(3):
            for end in (0, -1):
                face = tuple(end if a == axis else slice(None) for a in range(3))
                block_links[face] |= rng.integers(0, 64, block_links[face].shape).astype(np.uint8)
        links[box] = block_links
        blocks[coords] = (begin, tuple(e.stop - e.start for e in box))
        faces.write_block(coords, begin, fragments[box], block_links, affs[(slice(None),) + box])
    assert faces.affinities_dtype() == np.dtype(affs_dtype)
    assert links.any()
    np.testing.assert_array_equal(faces.links_volume(), links)
    for coords, (begin, shape) in blocks.items():
        for axis in range(3):
            if coords[axis] == 0:
                continue
            got_fragments, got_links, got_affs = faces.read_face(axis, coords, begin, shape, affs_dtype)
            slab = tuple(
                slice(b - 1, b + 1) if a == axis else slice(b, b + n) for a, (b, n) in enumerate(zip(begin, shape))
            )
            np.testing.assert_array_equal(got_fragments, fragments[slab])
            np.testing.assert_array_equal(got_links, links[slab])
            upper = tuple(slice(1, 2) if a == axis else slice(None) for a in range(3))
            expected = affs[(axis,) + slab][upper]
            assert got_affs.dtype == np.dtype(affs_dtype)
            assert got_affs[(axis,) + upper].tobytes() == expected.tobytes()  # bit for bit
            assert not got_affs[axis][tuple(slice(0, 1) if a == axis else slice(None) for a in range(3))].any()
