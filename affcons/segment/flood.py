"""Seeded watershed by priority flooding with a bucket queue (numba), O(voxels), deterministic.

Boundary values are quantised to 256 levels. Voxels are processed level by level in FIFO order; each processed
voxel hands its label to its unlabelled face neighbours inside the mask, which enter the queue at the higher of
the current level and their own. The queue starts with the labelled voxels in raster order (each at its own level).
Ties are thus broken by arrival order, which depends only on the input.

The kernels work on padded arrays (one voxel more on each side), so that a voxel's neighbours are fixed offsets
without bounds checks. Labels: > 0 a label, ``WALL`` (-1) for the padding and voxels outside the mask, ``-2 - level``
for an unlabelled voxel of that level.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from affcons.segment.reference_watershed import LEVELS
from affcons.segment.seeds import WALL


def neighbour_offsets(shape, per_slice: bool) -> np.ndarray:
    """Flat offsets of the face neighbours in a padded array of the unpadded ``shape`` (z, y, x), in the flood's
    order: -z, +z, -y, +y, -x, +x (without z with ``per_slice``)."""
    _, ny, nx = shape
    plane, row = (ny + 2) * (nx + 2), nx + 2
    offsets = [-plane, plane, -row, row, -1, 1]
    return np.asarray(offsets[2:] if per_slice else offsets, np.int64)


@numba.njit(cache=True)
def queue_start(labels, offsets, shape):  # pragma: no cover - compiled
    """Padded indices, in raster order, of the labelled voxels that have an unlabelled neighbour: the queue the
    flood starts from. The other labelled voxels would leave the queue without effect (labels are never removed),
    so leaving them out changes nothing."""
    nz, ny, nx = shape
    padded_y, padded_x = ny + 2, nx + 2
    start = np.empty(64, np.int64)
    found = 0
    for z in range(nz):
        for y in range(ny):
            base = ((z + 1) * padded_y + y + 1) * padded_x + 1
            for x in range(nx):
                p = base + x
                label = labels[p]
                if label <= 0:
                    continue
                for offset in offsets:
                    if labels[p + offset] < WALL:
                        if found == len(start):
                            grown = np.empty(2 * found, np.int64)
                            grown[:found] = start
                            start = grown
                        start[found] = p
                        found += 1
                        break
    return start[:found]


#: How many queue entries ahead the flood prefetches the labels around a voxel: the flood's order is scattered over
#: the block, so each pop misses the cache, and prefetching the misses of the pops to come overlaps them (2.7x).
PREFETCH_AHEAD = 8


@intrinsic
def prefetch(typing_context, array, index):
    """Hint the CPU to load ``array[index]`` into the cache (LLVM's ``llvm.prefetch``; no effect on results)."""

    def codegen(context, builder, signature, arguments):
        array_type = signature.args[0]
        array_struct = context.make_array(array_type)(context, builder, arguments[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array_struct, [arguments[1]])
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        # read (0), high temporal locality (3), data cache (1)
        builder.call(function, [builder.bitcast(pointer, byte_pointer), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


#: Queue entries per chunk: each level's FIFO is a linked list of chunks, so that pushes and pops touch memory
#: sequentially (a linked list of single voxels made every push and pop a cache miss).
CHUNK = 256


def queue_pool(labels: np.ndarray) -> np.ndarray:
    """Room for the bucket queue of :func:`flood_padded` over ``labels``: at most ``voxels / CHUNK + 2 LEVELS``
    chunks are in use at once (every level's FIFO has at most one partly consumed and one partly filled chunk).
    Allocated by numpy, which asks the kernel for huge pages."""
    return np.empty((labels.size // CHUNK + 2 * LEVELS + 1) * CHUNK, labels.dtype)


@numba.njit(cache=True)
def flood_padded(levels, labels, start, offsets, pool):  # pragma: no cover - compiled
    """Flood the padded ``labels`` in place from the queue ``start`` (padded indices, see :func:`queue_start`),
    visiting neighbours at ``offsets`` (:func:`neighbour_offsets`); ``pool`` from :func:`queue_pool`.

    ``labels``: > 0 a label, :data:`WALL`, or ``-2 - level`` for an unlabelled voxel of that level (one array
    read per neighbour instead of two); ``levels`` (uint8, padded) gives the start voxels' levels.
    """
    chunks = len(pool) // CHUNK
    next_chunk = np.empty(chunks, np.int64)
    free = np.arange(chunks - 1, -1, -1)
    free_count = chunks
    head_chunk = np.full(LEVELS, -1, np.int64)
    head_position = np.zeros(LEVELS, np.int64)
    tail_chunk = np.full(LEVELS, -1, np.int64)
    tail_position = np.zeros(LEVELS, np.int64)
    # A push appends to the tail chunk of its level, taking a free chunk when that one is full. It is written out
    # twice (start entries, neighbours): as a function it halved the speed (array arguments are reference counted).
    for p in start:
        level = np.int64(levels[p])
        tail = tail_chunk[level]
        if tail == -1 or tail_position[level] == CHUNK:
            free_count -= 1
            if tail == -1:
                head_chunk[level] = free[free_count]
                head_position[level] = 0
            else:
                next_chunk[tail] = free[free_count]
            tail = tail_chunk[level] = free[free_count]
            tail_position[level] = 0
        pool[tail * CHUNK + tail_position[level]] = p
        tail_position[level] += 1
    level = 0
    while level < LEVELS:
        chunk = head_chunk[level]
        if chunk == -1:
            level += 1
            continue
        position = head_position[level]
        p = pool[chunk * CHUNK + position]
        ahead = position + PREFETCH_AHEAD
        if ahead < CHUNK and (chunk != tail_chunk[level] or ahead < tail_position[level]):
            coming = pool[chunk * CHUNK + ahead]
            for offset in offsets:
                prefetch(labels, coming + offset)
        position += 1
        emptied = chunk == tail_chunk[level] and position == tail_position[level]
        if emptied or position == CHUNK:
            free[free_count] = chunk
            free_count += 1
            head_chunk[level] = -1 if emptied else next_chunk[chunk]
            position = 0
            if emptied:
                tail_chunk[level] = -1
        head_position[level] = position
        label = labels[p]
        for offset in offsets:
            neighbour = p + offset
            value = labels[neighbour]
            if value >= WALL:
                continue
            labels[neighbour] = label
            entry_level = max(level, np.int64(-2 - value))
            tail = tail_chunk[entry_level]
            if tail == -1 or tail_position[entry_level] == CHUNK:
                free_count -= 1
                if tail == -1:
                    head_chunk[entry_level] = free[free_count]
                    head_position[entry_level] = 0
                else:
                    next_chunk[tail] = free[free_count]
                tail = tail_chunk[entry_level] = free[free_count]
                tail_position[entry_level] = 0
            pool[tail * CHUNK + tail_position[entry_level]] = neighbour
            tail_position[entry_level] += 1
