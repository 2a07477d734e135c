"""Face sections: what the edges step needs of each block, written by the fragments step while it has it in memory.

The pairs across the face between block ``k - 1`` and block ``k`` along axis ``a`` need the fragments and face-link
bits of two sections (the last of block ``k - 1``, the first of block ``k``) and affinity channel ``a`` of the
first (a pair's affinity is its upper voxel's). Reading those from the volumes decodes whole chunks of three arrays
for a few sections; ``RUN_DIR/faces.zarr/<a>`` keeps just the sections, one array per axis ``a`` of shape
(3, the run's ROI in voxels with 2 sections per block along ``a``): section ``2k`` is block k's first, ``2k + 1``
its last, so the slab across the face below block k is sections ``2k - 1, 2k``. Channels: 0 the fragments, 1 the
face-link bits (:func:`affcons.segment.stitch.face_links`, zero everywhere else), 2 the affinities of channel ``a``
in section ``2k`` (their bits: float affinities are stored as the unsigned integers of their width).

The element type is the unsigned integer wide enough for the fragment ids and the affinities' bits. A chunk holds one
block's sections, so the fragments step writes three small chunks per block and the edges step reads six (instead of
decoding its own chunks of fragments, links and affinities and one chunk of each neighbour below): zarr's cost per
call, not the bytes, is what these tiny reads and writes pay. Run-internal state, created with the fragments
(``SegmentDriver.create_fragments``), written through zarr with zstd.
"""

import numpy as np

from blockwise.volumes import open_zarr

AXES = (0, 1, 2)
FRAGMENTS, LINKS, AFFINITIES = 0, 1, 2


def _along(axis: int, part: slice) -> tuple[slice, ...]:
    """``part`` along ``axis``, everything along the other axes."""
    return tuple(part if a == axis else slice(None) for a in AXES)


def container_dtype(ids_dtype, affs_dtype) -> np.dtype:
    """The unsigned integer type that holds both the fragment ids and the affinities' bits."""
    return np.dtype(f"uint{8 * max(np.dtype(ids_dtype).itemsize, np.dtype(affs_dtype).itemsize)}")


class FaceSections:
    """The face sections of one run: ``path`` (``RUN_DIR/faces.zarr``), the block grid and the volume (voxels)."""

    def __init__(self, path, grid_shape, block_shape, volume_shape):
        self.path = str(path)
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.block_shape = tuple(int(b) for b in block_shape)
        self.volume_shape = tuple(int(v) for v in volume_shape)
        self._arrays = {}

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}

    def create(self, ids_dtype, affs_dtype) -> None:
        """Create (replace) the three arrays; the affinities' dtype is recorded to read their bits back."""
        import zarr
        from zarr.codecs import ZstdCodec

        group = zarr.open_group(self.path, mode="w", attributes={"affinities_dtype": np.dtype(affs_dtype).name})
        for axis in AXES:
            group.create_array(
                str(axis),
                shape=(3,) + tuple(2 * self.grid_shape[a] if a == axis else self.volume_shape[a] for a in AXES),
                chunks=(3,) + tuple(2 if a == axis else self.block_shape[a] for a in AXES),
                dtype=container_dtype(ids_dtype, affs_dtype),
                compressors=[ZstdCodec(level=3)],
                fill_value=0,
            )

    def array(self, axis: int, writable: bool = False):
        key = (axis, writable)
        if key not in self._arrays:
            self._arrays[key] = open_zarr(f"{self.path}/{axis}", writable)
        return self._arrays[key]

    @staticmethod
    def _index(axis: int, begin, shape, sections: slice) -> tuple[slice, ...]:
        return (slice(None),) + tuple(sections if a == axis else slice(begin[a], begin[a] + shape[a]) for a in AXES)

    def write_block(self, coords, begin, fragments: np.ndarray, links: np.ndarray, affs: np.ndarray) -> None:
        """Store the sections of the block at grid ``coords`` whose write ROI starts at voxel ``begin`` (of the ROI):
        its ``fragments`` and ``links`` (z, y, x) and affinities ``affs`` (C >= 3, z, y, x), all of the write ROI."""
        for axis in AXES:
            array = self.array(axis, writable=True)
            ends = [0, fragments.shape[axis] - 1]
            sections = np.zeros((3,) + tuple(2 if a == axis else n for a, n in enumerate(fragments.shape)), array.dtype)
            sections[FRAGMENTS] = np.take(fragments, ends, axis=axis)
            sections[LINKS] = np.take(links, ends, axis=axis)
            bits = np.take(affs[axis], [0], axis=axis)
            bits = bits.view(f"uint{8 * bits.dtype.itemsize}")
            sections[(AFFINITIES,) + _along(axis, slice(0, 1))] = bits
            k = coords[axis]
            array[self._index(axis, begin, fragments.shape, slice(2 * k, 2 * k + 2))] = sections

    def read_face(self, axis: int, coords, begin, shape, affs_dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The slab across the face below the block at ``coords`` along ``axis`` (``coords[axis] >= 1``): fragments
        and links of the section below and the block's first one, and affinities (3, slab) of ``affs_dtype`` whose
        channel ``axis`` holds the block's first section (all else zero: no pair uses it)."""
        k = coords[axis]
        sections = np.asarray(self.array(axis)[self._index(axis, begin, shape, slice(2 * k - 1, 2 * k + 1))])
        affs_dtype = np.dtype(affs_dtype)
        affs = np.zeros((3,) + sections.shape[1:], affs_dtype)
        upper = _along(axis, slice(1, 2))
        bits = sections[(AFFINITIES,) + upper].astype(f"uint{8 * affs_dtype.itemsize}")
        affs[(axis,) + upper] = bits.view(affs_dtype)
        return sections[FRAGMENTS], sections[LINKS].astype(np.uint8), affs

    def affinities_dtype(self) -> np.dtype:
        import zarr

        return np.dtype(zarr.open_group(self.path, mode="r").attrs["affinities_dtype"])

    def links_volume(self) -> np.ndarray:
        """The face-link bits of the whole volume (uint8, zero off the block faces), rebuilt from the sections."""
        volume = np.zeros(self.volume_shape, np.uint8)
        for axis in AXES:
            links = np.asarray(self.array(axis)[LINKS]).astype(np.uint8)
            for k in range(self.grid_shape[axis]):
                start = k * self.block_shape[axis]
                last = min(start + self.block_shape[axis], self.volume_shape[axis]) - 1
                for section, position in ((2 * k, start), (2 * k + 1, last)):
                    volume[_along(axis, slice(position, position + 1))] |= links[
                        _along(axis, slice(section, section + 1))
                    ]
        return volume
