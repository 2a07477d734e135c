"""The ``--dry-run`` plans of ``affcons segment`` and ``affcons predict``, and the segmentation cost model shared
with ``benchmarks/postprocess.py``.

The plan lists blocks per task, the read volume with context, output sizes, and an estimated cost: time per stage
from per-worker rates, memory per worker from bytes per read voxel, and the global step's memory from bytes per
edge. Rates and densities default to :data:`MEASURED` (this repository's benchmark on a 2-core machine, see
``docs/design/blockwise.md``).

Any global step (agglomerate: the whole RAG in one process) whose estimated memory exceeds
:data:`LARGE_MACHINE_BYTES` (128 GB) is flagged ``DOES NOT FIT``.
"""

import math
from dataclasses import asdict, dataclass, replace

from blockwise.config import SegmentConfig

LARGE_MACHINE_BYTES = 128e9
#: Kasthuri15 (Kasthuri et al. 2015): voxels at 6 x 6 x 30 nm; typical fragment RAG size and its range.
KASTHURI_SHAPE = (1850, 12895, 10747)
KASTHURI_NODES = 8e7
KASTHURI_EDGES = 4e8
KASTHURI_EDGE_RANGE = (1e8, 3e9)
KASTHURI_NODE_RANGE = (3e7, 3e8)
#: Bytes per stored node in the graph store (id, z, y, x, size, block + index), both backends (order of magnitude).
STORE_BYTES_PER_NODE = 80.0
#: Bytes per stored edge without histogram (u, v, sum, count, linked, block + indexes; SQLite, benchmarks/store.py).
STORE_BYTES_PER_EDGE = 75.0


@dataclass(frozen=True)
class Rates:
    """Measured costs. Throughputs are per worker process, in voxels per second of *block work*."""

    #: fragments: voxels of the read ROI (block + context) per second.
    fragments_read_voxels_per_s: float
    #: edges: voxels per second.
    edges_voxels_per_s: float
    #: extract: voxels per second, per threshold written (reading fragments is amortised over thresholds).
    extract_voxels_per_s: float
    #: graph store: edge rows written per second (one backend).
    store_write_edges_per_s: float
    #: graph store: edge rows read per second by agglomerate.
    store_read_edges_per_s: float
    #: merge tree build: edges per second.
    agglomerate_edges_per_s: float
    #: peak worker RSS per voxel of the fragments read ROI (bytes), and the fixed part (imports, bytes).
    worker_bytes_per_read_voxel: float
    worker_base_bytes: float
    #: measured peak bytes per edge of the whole agglomerate step (store read + tree), mean scoring.
    agglomerate_bytes_per_edge: float
    #: RAG density: fragments and edges per voxel (for plans of volumes not yet segmented).
    nodes_per_voxel: float
    edges_per_voxel: float
    #: wall time per step outside block work (the scheduler, worker start-up or relay, the tail), seconds.
    worker_startup_s: float


#: Defaults measured on this project's 2-core machine (2026-12-02): ``.venv/bin/python benchmarks/postprocess.py
#: --sizes 512 --baseline-sizes --workers 2`` prints them for its 2-worker run (512^3 mirrored gala-test volume, blocks
#: 128^3, context 8^3, nine thresholds, warm workers; whole output: ``benchmarks/results/postprocess-512-rates.txt``);
#: the store's write rate is ``benchmarks/store.py``'s (SQLite); worker memory and the RAG densities are older
#: figures (Kasthuri15's typical 8e7 nodes and 4e8 edges; degraded ground-truth affinities give ~3x denser RAGs).
MEASURED = Rates(
    fragments_read_voxels_per_s=6.05e6,
    edges_voxels_per_s=7.41e7,
    extract_voxels_per_s=1.52e8,
    store_write_edges_per_s=4.1e5,
    store_read_edges_per_s=3.45e6,
    agglomerate_edges_per_s=4.26e5,
    worker_bytes_per_read_voxel=125.0,
    worker_base_bytes=250e6,
    agglomerate_bytes_per_edge=167.0,
    nodes_per_voxel=KASTHURI_NODES / math.prod(KASTHURI_SHAPE),
    edges_per_voxel=KASTHURI_EDGES / math.prod(KASTHURI_SHAPE),
    worker_startup_s=0.83,
)


def read_voxels(roi_voxels, block_voxels, context_voxels) -> tuple[int, float]:
    """Total voxels read by the fragments step over all blocks (each block's write ROI grown by the context,
    clipped to the volume), and that total over the volume's voxels (the context overhead)."""
    total = 1
    for size, block, context in zip(roi_voxels, block_voxels, context_voxels):
        axis = 0
        for begin in range(0, size, block):
            axis += min(size, begin + block + context) - max(0, begin - context)
        total *= axis
    return total, total / math.prod(roi_voxels)


def agglomerate_bytes_per_edge(rates: Rates, histogram_bins: int) -> float:
    """Peak bytes per edge of the global agglomeration: the measured rate or the model (the edge table plus
    :func:`affcons.segment.agglomerate.merge_tree_bytes_per_edge`), whichever is larger."""
    from affcons.segment import EdgeTable
    from affcons.segment.agglomerate import merge_tree_bytes_per_edge

    model = merge_tree_bytes_per_edge(histogram_bins) + EdgeTable.bytes_per_edge(histogram_bins)
    return max(rates.agglomerate_bytes_per_edge, model)


#: Largest sample box (voxels) of :func:`sample_density`, and how many boxes it takes along the ROI's diagonal.
DENSITY_SAMPLE_VOXELS = (32, 256, 256)
DENSITY_SAMPLES = 3


def sample_density(config: SegmentConfig) -> tuple[float, float, int]:
    """Fragments and RAG edges per voxel, measured on :data:`DENSITY_SAMPLES` boxes of the affinities along the ROI's
    diagonal (each at most a block and :data:`DENSITY_SAMPLE_VOXELS`), with the run's watershed settings. Returns
    ``(nodes_per_voxel, edges_per_voxel, voxels_sampled)``; a fragment cut by a box face counts once per box, so
    the densities are slightly high (the plan errs on the side of memory)."""
    from funlib.geometry import Coordinate, Roi

    from affcons.segment import edge_table, watershed_from_affinities
    from blockwise.volumes import box_for

    affs = box_for(config.affs, config.affs_offset, config.voxel_size)
    voxel_size = Coordinate(config.voxel_size)
    roi = Roi(config.roi_offset, config.roi_shape)
    box = Coordinate(min(b, s, r) for b, s, r in zip(config.block_voxels, DENSITY_SAMPLE_VOXELS, config.roi_voxels))
    free = roi.shape / voxel_size - box
    nodes = edges = voxels = 0
    for k in range(DENSITY_SAMPLES):
        begin = roi.begin + Coordinate(f * k // max(DENSITY_SAMPLES - 1, 1) for f in free) * voxel_size
        sample = affs.read(Roi(begin, box * voxel_size), channels=slice(0, 3))
        fragments, count = watershed_from_affinities(
            sample,
            boundary_threshold=config.fragments.boundary_threshold,
            min_size=config.fragments.min_size,
            per_slice=config.fragments.per_slice,
            voxel_size=tuple(config.voxel_size),
        )
        nodes += count
        edges += len(edge_table(fragments, sample))
        voxels += fragments.size
    return nodes / voxels, edges / voxels, voxels


def segment_plan(config: SegmentConfig, rates: Rates = MEASURED, density: tuple[float, float] | None = None) -> dict:
    """The blocks, sizes and estimated cost of ``config`` (see the module docstring); ``density`` (fragments and
    edges per voxel, e.g. from :func:`sample_density`) replaces the rates' assumed density."""
    from affcons.store.base import redact
    from blockwise.steps.base import ids_dtype

    if density is not None:
        rates = replace(rates, nodes_per_voxel=density[0], edges_per_voxel=density[1])

    roi_voxels = config.roi_voxels
    block_voxels = config.block_voxels
    context_voxels = tuple(c // s for c, s in zip(config.context, config.voxel_size))
    grid = tuple(math.ceil(r / b) for r, b in zip(roi_voxels, block_voxels))
    voxels = math.prod(roi_voxels)
    fragments_read, overhead = read_voxels(roi_voxels, block_voxels, context_voxels)
    thresholds = config.extract.thresholds
    bins = config.histogram_bins
    workers = config.execution.workers
    nodes = voxels * rates.nodes_per_voxel
    edges = voxels * rates.edges_per_voxel
    bytes_per_edge = agglomerate_bytes_per_edge(rates, bins)
    agglomerate_bytes = edges * bytes_per_edge + nodes * 64
    read_block = math.prod(min(b + 2 * c, r) for b, c, r in zip(block_voxels, context_voxels, roi_voxels))
    stage_s = {
        "fragments": fragments_read / rates.fragments_read_voxels_per_s / workers,
        "edges": voxels / rates.edges_voxels_per_s / workers + edges / rates.store_write_edges_per_s,
        "agglomerate": edges / rates.store_read_edges_per_s + edges / rates.agglomerate_edges_per_s,
        "extract": voxels * len(thresholds) / rates.extract_voxels_per_s / workers,
    }
    ids = ids_dtype(math.prod(grid), math.prod(block_voxels))
    plan = {
        "volume": {
            "affs": config.affs,
            "roi_offset_nm": list(config.roi_offset),
            "roi_shape_nm": list(config.roi_shape),
            "voxel_size_nm": list(config.voxel_size),
            "shape_voxels": list(roi_voxels),
            "voxels": voxels,
        },
        "blocks": {
            "block_voxels": list(block_voxels),
            "context_voxels": list(context_voxels),
            "grid": list(grid),
            "per_task": {"fragments": math.prod(grid), "edges": math.prod(grid), "extract": math.prod(grid)},
            "fragments_read_voxels": fragments_read,
            "context_overhead": round(overhead, 3),
            "chunk_shape": list(config.chunk_shape),
        },
        "outputs": {
            "fragments": f"{config.out}/fragments",
            "segmentations": [f"{config.out}/segmentation_{t:.2f}" for t in thresholds],
            "dtype": ids.name,
            "bytes_each_uncompressed": voxels * ids.itemsize,
            "run_dir": config.run_dir,
            "graph": redact(config.graph),
            # per axis a: 2 sections of ids and link bits per block, 1 of affinities (counted as uint8)
            "face_sections_bytes_uncompressed": sum(
                math.ceil(r / b) * voxels // r * (2 * (ids.itemsize + 1) + 1) for r, b in zip(roi_voxels, block_voxels)
            ),
        },
        "estimate": {
            "workers": workers,
            "nodes": nodes,
            "edges": edges,
            "density": "sampled from the affinities" if density is not None else "assumed: Kasthuri15's",
            "histogram_bins": bins,
            "stage_s": {k: round(v, 1) for k, v in stage_s.items()},
            "total_s": round(sum(stage_s.values()) + 3 * rates.worker_startup_s, 1),
            "worker_peak_bytes": rates.worker_base_bytes + rates.worker_bytes_per_read_voxel * read_block,
            "store_bytes": edges * (STORE_BYTES_PER_EDGE + 4 * bins) + nodes * STORE_BYTES_PER_NODE,
            "agglomerate_bytes_per_edge": bytes_per_edge,
            "agglomerate_bytes": agglomerate_bytes,
            "agglomerate_fits_128GB": agglomerate_bytes <= LARGE_MACHINE_BYTES,
            "rates": asdict(rates),
        },
    }
    if config.agglomerate.method == "hierarchical":
        plan["hierarchy"] = hierarchy_plan(grid, block_voxels, roi_voxels, config, rates)
    return plan


#: Thickness of the frozen residual along a box face, in fragment diameters (each side of the face): the boundary
#: fragments and the clusters whose best edge leads to them. Calibrated on ``benchmarks/hierarchical.py``: level 0
#: deferred edges were 0.57 of the edges (lattice RAG, 128^3 blocks, 8-voxel fragments; model 0.58) and 0.70 (gala
#: 512^3, 64^3 blocks, ~9-voxel fragments; model 0.92, so the projection errs high).
SHELL_DIAMETERS = 2


def shell_voxels(boxes_per_axis: list[list[int]], thickness) -> float:
    """Voxels within ``thickness`` (voxels per axis) of the faces of each box of a grid of boxes, summed over the
    boxes (``boxes_per_axis``: the boxes' lengths along each axis; a product grid, so the sum factorises)."""
    whole = math.prod(sum(lengths) for lengths in boxes_per_axis)
    inner = math.prod(sum(max(n - 2 * t, 0) for n in lengths) for lengths, t in zip(boxes_per_axis, thickness))
    return whole - inner


def box_lengths(size: int, box: int) -> list[int]:
    """The lengths of the boxes of ``box`` voxels that tile ``size`` voxels (the last one clipped)."""
    return [min(box, size - begin) for begin in range(0, size, box)]


def hierarchy_plan(grid, block_voxels, roi_voxels, config: SegmentConfig, rates: Rates) -> dict:
    """The levels of the hierarchical agglomeration: blocks and box per level, each level's projected memory per
    block, and the level the worker memory budget (if any) would make the top.

    Level 0 holds its block's edges at the assumed density (input table plus :func:`level_bytes_per_edge`). A
    block of level k >= 1 holds its children's residual: the projection counts the edges within
    :data:`SHELL_DIAMETERS` fragment diameters (from the node density, isotropic in nm) of each child box's faces,
    where the frozen clusters and their deferred and crossing edges lie, at ``level_bytes_per_edge`` plus an input
    row each. A model of a surface, not a bound (a plateau of ties keeps more); the run itself decides from the
    measured states (``summary.json`` reports the estimate and the outcome per level)."""
    from affcons.segment import EdgeTable
    from affcons.segment.hierarchy import level_bytes_per_edge
    from affcons.segment.scoring import parse_scoring
    from blockwise.steps.hierarchy import level_grid, top_level

    bins = config.histogram_bins
    agglomerate = config.agglomerate
    budget = agglomerate.worker_memory_bytes
    top = top_level(grid, agglomerate.stop_level)
    per_edge = level_bytes_per_edge(bins, parse_scoring(agglomerate.scoring) >= 0)
    residual_per_edge = per_edge + EdgeTable.bytes_per_edge(bins)
    fragment_nm = (math.prod(config.voxel_size) / rates.nodes_per_voxel) ** (1 / 3)
    diameter = [fragment_nm / v for v in config.voxel_size]
    thickness = [SHELL_DIAMETERS * d for d in diameter]
    block_edges = math.prod(block_voxels) * rates.edges_per_voxel
    levels, stop, stop_reason = [], top, None
    for level in range(top + 1):
        cell = 2**level
        is_top = level == top
        box = roi_voxels if is_top else tuple(min(b * cell, r) for b, r in zip(block_voxels, roi_voxels))
        if level == 0:
            block_bytes = rates.worker_base_bytes + block_edges * (per_edge + EdgeTable.bytes_per_edge(bins))
        else:
            child = [b * cell // 2 for b in block_voxels]
            children = [box_lengths(n, c) for n, c in zip(box, child)]
            block_bytes = rates.worker_base_bytes + (
                shell_voxels(children, thickness) * rates.edges_per_voxel * residual_per_edge
            )
        levels.append(
            {
                "level": level,
                "blocks": 1 if is_top else math.prod(level_grid(grid, level)),
                "box_blocks": max(grid) if is_top else cell,
                "box_voxels": list(box),
                "one_process": is_top,
                "projected_block_bytes": block_bytes,
            }
        )
        if budget is not None and level > 0 and stop == top and block_bytes > budget and stop_reason is None:
            stop = level
            child = [b * cell // 2 for b in block_voxels]
            everything = [box_lengths(n, c) for n, c in zip(roi_voxels, child)]
            finish = rates.worker_base_bytes + (
                shell_voxels(everything, thickness) * rates.edges_per_voxel * residual_per_edge
            )
            stop_reason = (
                f"level {level}'s largest block ~{human_bytes(block_bytes)} exceeds the worker budget "
                f"{human_bytes(budget)}: the driver would finish the residual of level {level - 1} there "
                f"(~{human_bytes(finish)} in one process)"
            )
    if budget is not None and stop_reason is None:
        stop_reason = f"every level within the worker budget {human_bytes(budget)}"
    return {
        "levels": levels,
        "stop_level": agglomerate.stop_level,
        "worker_memory_bytes": budget,
        "projected_stop_level": stop,
        "projected_stop_reason": stop_reason,
        "level0_fits_budget": budget is None or levels[0]["projected_block_bytes"] <= budget,
        "fragment_diameter_voxels": [round(d, 1) for d in diameter],
        "level0_edges_per_block": block_edges,
        "level_bytes_per_edge": per_edge,
        "level0_worker_bytes": levels[0]["projected_block_bytes"],
    }


def human_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def format_segment_plan(plan: dict) -> str:
    volume, blocks, outputs, estimate = plan["volume"], plan["blocks"], plan["outputs"], plan["estimate"]
    lines = [
        "affcons segment: plan (dry run; nothing written)",
        f"  volume      {volume['affs']}: ROI offset {volume['roi_offset_nm']} nm, shape {volume['roi_shape_nm']} nm "
        f"= {volume['shape_voxels']} voxels at {volume['voxel_size_nm']} nm ({volume['voxels'] / 1e6:.1f} Mvoxel)",
        f"  blocks      {blocks['block_voxels']} voxels, grid {blocks['grid']}: "
        + ", ".join(f"{task} {count}" for task, count in blocks["per_task"].items())
        + f" blocks; context {blocks['context_voxels']} voxels -> fragments read {blocks['context_overhead']}x "
        "the volume",
        f"  outputs     {outputs['fragments']} and {len(outputs['segmentations'])} segmentation(s) "
        f"({', '.join(s.rsplit('/', 1)[-1] for s in outputs['segmentations'])}), {outputs['dtype']}, "
        f"{human_bytes(outputs['bytes_each_uncompressed'])} each uncompressed, chunks {blocks['chunk_shape']}",
        f"  run dir     {outputs['run_dir']} (face sections: "
        f"{human_bytes(outputs['face_sections_bytes_uncompressed'])} uncompressed); graph " + outputs["graph"],
        f"  estimate    {estimate['workers']} worker(s): "
        + ", ".join(f"{k} {human_seconds(v)}" for k, v in estimate["stage_s"].items())
        + f"; total ~{human_seconds(estimate['total_s'])}",
        f"              RAG ~{estimate['nodes']:.2g} nodes, ~{estimate['edges']:.2g} edges ({estimate['density']}); "
        "graph "
        f"store ~{human_bytes(estimate['store_bytes'])}; peak memory per worker "
        f"~{human_bytes(estimate['worker_peak_bytes'])}",
        ("  global alternative" if "hierarchy" in plan else "  global step")
        + f" agglomerate: {estimate['agglomerate_bytes_per_edge']:.0f} B/edge -> "
        f"~{human_bytes(estimate['agglomerate_bytes'])} in one process: "
        + ("fits one 128 GB machine" if estimate["agglomerate_fits_128GB"] else "DOES NOT FIT one 128 GB machine"),
    ]
    if "hierarchy" in plan:
        hierarchy = plan["hierarchy"]
        lines.append(
            "  agglomeration hierarchical (exact, the same merge tree): "
            + ", ".join(
                f"level {h['level']} {h['blocks']} block(s) of {h['box_voxels']} voxels"
                + (
                    " (one process: the " + ("stop level)" if hierarchy["stop_level"] == h["level"] else "root)")
                    if h["one_process"]
                    else ""
                )
                for h in hierarchy["levels"]
            )
        )
        lines.append(
            f"              level 0: ~{hierarchy['level0_edges_per_block']:.2g} edges per block x "
            f"{hierarchy['level_bytes_per_edge']} B/edge -> ~{human_bytes(hierarchy['level0_worker_bytes'])} per "
            f"worker; levels >= 1 hold their children's frozen residual (a surface: edges within {SHELL_DIAMETERS} "
            f"fragment diameters, {hierarchy['fragment_diameter_voxels']} voxels each, of the children's faces; "
            "measured per level in summary.json)"
        )
        lines.append(
            "              projected memory per block: "
            + ", ".join(f"level {h['level']} ~{human_bytes(h['projected_block_bytes'])}" for h in hierarchy["levels"])
        )
        if hierarchy["worker_memory_bytes"] is not None:
            lines.append(
                f"              worker budget {human_bytes(hierarchy['worker_memory_bytes'])}: "
                + hierarchy["projected_stop_reason"]
                + (
                    ""
                    if hierarchy["level0_fits_budget"]
                    else "; level 0 itself exceeds it: use smaller blocks (--block-size)"
                )
                + " (projected; the run decides from the measured states)"
            )
    return "\n".join(lines)


def project(
    rates: Rates,
    shape=KASTHURI_SHAPE,
    nodes=KASTHURI_NODES,
    edges=KASTHURI_EDGES,
    workers: int = 100,
    block=(64, 256, 256),
    context=(8, 32, 32),
    thresholds: int = 3,
    histogram_bins: int = 0,
) -> dict:
    """Time and memory per stage for a volume of ``shape`` voxels with ``nodes``/``edges`` RAG, from ``rates``."""
    voxels = math.prod(shape)
    fragments_read, overhead = read_voxels(shape, block, context)
    read_block = math.prod(b + 2 * c for b, c in zip(block, context))
    bytes_per_edge = agglomerate_bytes_per_edge(rates, histogram_bins)
    stages = {
        "fragments": {
            "s": fragments_read / rates.fragments_read_voxels_per_s / workers,
            "bytes_per_worker": rates.worker_base_bytes + rates.worker_bytes_per_read_voxel * read_block,
        },
        "edges": {
            "s": voxels / rates.edges_voxels_per_s / workers,
            "bytes_per_worker": rates.worker_base_bytes + rates.worker_bytes_per_read_voxel * read_block / 2,
        },
        "store writes (one server)": {
            "s": edges / rates.store_write_edges_per_s,
            "bytes": edges * (STORE_BYTES_PER_EDGE + 4 * histogram_bins) + nodes * STORE_BYTES_PER_NODE,
        },
        "agglomerate (global)": {
            "s": edges / rates.store_read_edges_per_s + edges / rates.agglomerate_edges_per_s,
            "bytes": edges * bytes_per_edge + nodes * 64,
        },
        "extract": {
            "s": voxels * thresholds / rates.extract_voxels_per_s / workers,
            "bytes_per_worker": rates.worker_base_bytes + 40 * math.prod(block),
        },  # LUTs are memory-mapped
    }
    stages["agglomerate (global)"]["fits_128GB"] = stages["agglomerate (global)"]["bytes"] <= LARGE_MACHINE_BYTES
    return {
        "voxels": voxels,
        "nodes": nodes,
        "edges": edges,
        "workers": workers,
        "context_overhead": overhead,
        "bytes_per_edge": bytes_per_edge,
        "stages": stages,
    }


def with_measurements(**changes) -> Rates:
    return replace(MEASURED, **changes)


def format_predict_plan(config, step) -> str:
    """What a run of the resolved ``PredictConfig`` ``config`` would do with its ``PredictStep`` ``step``."""
    grid = step.grid
    voxels = math.prod(config.roi_shape) // math.prod(config.voxel_size)
    channels = 3 if config.channels == "short" else None
    shape = [s // v for s, v in zip(config.roi_shape, config.voxel_size)]
    lines = [
        "affcons predict: plan (dry run; nothing written)",
        f"  raw         {config.raw}: voxel size {list(config.voxel_size)} nm, offset {list(config.raw_offset)} nm",
        f"  region      offset {list(config.roi_offset)} nm, shape {list(config.roi_shape)} nm = {shape} voxels "
        f"({voxels / 1e6:.1f} Mvoxel)",
        f"  network     {config.checkpoint} (sha256 {str(config.checkpoint_sha256)[:12]}), map {config.map}, "
        f"precision {config.precision}, batch {config.batch_size}",
        f"  tiles       patch {list(grid.patch)} - 2 x margin {list(grid.margin)} = tile {list(grid.tile)}: "
        f"{grid.overhead:.2f} input voxels per output voxel",
        f"  blocks      {list(config.block_voxels)} voxels, grid {list(step.grid_shape)} = {step.num_blocks} blocks; "
        f"chunks {list(config.chunk_shape)}; sub-blocks {list(step.sub_block / step.voxel_size)}",
        f"  outputs     {config.out} ({channels or 'all'} channels, {config.dtype})"
        + (f", {config.disagreement} (uint8)" if config.disagreement else ""),
        f"  workers     {config.execution.workers} on {config.device}"
        + (f" (GPUs {config.gpus})" if config.gpus else "")
        + f"; run dir {config.run_dir}",
    ]
    return "\n".join(lines)
