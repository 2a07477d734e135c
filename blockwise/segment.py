"""``affcons segment``: resolve the options into a :class:`~blockwise.config.SegmentConfig`, guard existing outputs,
run fragments -> edges -> agglomerate -> extract, summarise, and turn failures into an exit code.

Order of a run (:meth:`SegmentDriver.run`):

1. Checks that write nothing: the run directory's ``config.yaml``, ``OUT.zarr/fragments``, the requested
   ``OUT.zarr/segmentation_<t>`` and the graph store must be absent or carry this config's fingerprint; otherwise
   :class:`~affcons.errors.OutputExistsError` lists the fields that differ (exit code 2). ``--dry-run`` stops here
   and prints the plan (:mod:`blockwise.plan`).
2. ``config.yaml`` (the resolved config), outputs created with provenance attributes and ``complete: false``.
3. ``fragments``, then ``edges``, each one daisy task (:meth:`blockwise.runner.Driver.run_step`), then the
   agglomeration (skipped when ``merge_tree.npz`` of this fingerprint exists and no fragment or edge block was
   redone): ``global`` in this process, or ``hierarchical``, one daisy task per level
   (:mod:`blockwise.steps.hierarchy`) and the tree assembled here; then one ``extract`` task for the thresholds not
   yet complete.
4. Only when every block of every task succeeded: ``complete: true`` on each new segmentation, exit code 0.
   Otherwise exit code 1 and the failed blocks per task (grid index and ROI) on stderr and in ``summary.json``.

Re-running resumes through daisy's done markers (``RUN_DIR/tracking/<task_id>``): every block is deterministic and
overwrites its own chunks and store rows, so a resumed run -- also after SIGKILL of this driver -- ends with the
same bytes as an uninterrupted one.
"""

import time
from pathlib import Path

import numpy as np

from affcons.config import validate
from affcons.errors import ConfigError, OutputExistsError, VolumeError
from blockwise.config import AFFINITY_DTYPES, SegmentConfig, SegmentOptions
from blockwise.faults import inject_fault
from blockwise.geometry import check_block_chunks, resolve_roi, resolve_voxel_size, to_nm
from blockwise.layout import (
    FRAGMENTS,
    RunDir,
    input_is_complete,
    read_attrs,
    segment_run_dir,
    segmentation_name,
    threshold_name,
)
from blockwise.runner import Driver
from blockwise.steps.agglomerate import GlobalAgglomeration
from blockwise.steps.base import check_affinity_values, face_sections
from blockwise.steps.edges import EdgesStep
from blockwise.steps.extract import ExtractStep
from blockwise.steps.fragments import FragmentsStep
from blockwise.volumes import box_for

#: Default block and context, voxels (z, y, x).
DEFAULT_BLOCK = (64, 256, 256)
DEFAULT_CONTEXT = (8, 32, 32)
#: Store meta key of the fingerprint.
STORE_META_KEY = "segment_fingerprint"


def resolve(options: SegmentOptions, voxels: dict | None = None) -> SegmentConfig:
    """A complete :class:`SegmentConfig` from the user's options and the affinities.

    ``voxels`` holds lengths given in voxels (``block_size``, ``context`` from the command line); they are converted
    to nm here, once the voxel size is known. Opens the affinities to check channels (>= 3), dtype (uint8, float32,
    float16), voxel size and ROI.
    """
    from affcons.io import open_volume

    data = options.model_dump()
    for key in ("affs", "out"):
        if not data.get(key):
            raise ConfigError(f"missing {key}: pass --{key} or set '{key}' in the config file")
    if not data["extract"] or not data["extract"].get("thresholds"):
        raise ConfigError("no thresholds: pass --thresholds T [T ...] (values in [0, 1])")
    if not str(data["out"]).endswith(".zarr"):
        raise ConfigError(f"--out must be a zarr container ending in .zarr, got {data['out']}")
    affs_path = data["affs"]
    voxel_size = resolve_voxel_size(affs_path, data["voxel_size"], "affinities")
    affs = open_volume(affs_path, voxel_size=voxel_size)
    check_affinities(affs, affs_path)
    data["affs_complete"] = input_is_complete(affs_path)
    for key, value in (voxels or {}).items():
        if value is not None:
            data[key] = to_nm(value, voxel_size)
    data["voxel_size"] = voxel_size
    data["affs_offset"] = tuple(affs.roi.offset)
    data["block_size"] = data["block_size"] or to_nm(DEFAULT_BLOCK, voxel_size)
    data["context"] = data["context"] or to_nm(DEFAULT_CONTEXT, voxel_size)
    roi = resolve_roi(affs.roi, data["roi_offset"], data["roi_shape"], voxel_size, affs_path)
    data["roi_offset"], data["roi_shape"] = tuple(roi.offset), tuple(roi.shape)
    block_voxels = clip_block(data["block_size"], data["chunk_shape"], roi.shape, voxel_size)
    data["block_size"] = to_nm(block_voxels, voxel_size)
    data["chunk_shape"] = data["chunk_shape"] or block_voxels
    check_block_chunks(block_voxels, data["chunk_shape"])
    sample_affinities(affs, roi, affs_path)
    data["affs"] = str(Path(affs_path).absolute()) if "://" not in affs_path else affs_path
    data["out"] = str(Path(data["out"]).absolute())
    run_dir = RunDir(Path(data["run_dir"] or segment_run_dir(data["out"])).absolute())
    data["run_dir"] = str(run_dir)
    data["graph"], data["graph_credentials"] = take_password(
        absolute_graph_url(data["graph"] or run_dir.default_graph), data["graph_credentials"]
    )
    return validate(SegmentConfig, data, "segment options")


def take_password(url: str, credentials: str | None) -> tuple[str, str | None]:
    """``(url without its password, absolute credentials path)``; the password (from the URL, or checked in the
    credentials file) goes to this process's worker environment only (:mod:`affcons.secrets`)."""
    from affcons.secrets import publish_password, read_credentials, split_password

    url, password = split_password(url)
    if credentials is not None:
        credentials = str(Path(credentials).absolute())
        password = password or read_credentials(credentials)
    publish_password(password)
    return url, credentials


def clip_block(block_nm, chunk_voxels, roi_nm, voxel_size) -> tuple[int, int, int]:
    """The block in voxels, no larger than the region (rounded up to whole output chunks when the chunk shape is
    given): a block larger than the volume would only allocate memory for nothing."""
    block = tuple(b // s for b, s in zip(block_nm, voxel_size))
    if any(b % s for b, s in zip(block_nm, voxel_size)):
        return block  # refused by SegmentConfig's check, with the offending value
    region = tuple(r // s for r, s in zip(roi_nm, voxel_size))
    if chunk_voxels is None:
        return tuple(min(b, r) for b, r in zip(block, region))
    return tuple(min(b, -(-r // c) * c) for b, r, c in zip(block, region, chunk_voxels))


def sample_affinities(affs, roi, path: str, samples: int = 8) -> None:
    """Check the values of up to ``samples`` whole chunks on the diagonal of the region's chunk grid before any work
    starts (:func:`blockwise.steps.base.check_affinity_values`); every block checks its own values again."""
    from funlib.geometry import Coordinate, Roi

    if np.dtype(affs.dtype) == np.uint8:
        return
    chunk = Coordinate(affs.chunk_shape[-3:]) * affs.voxel_size
    first = (roi.begin - affs.roi.begin) // chunk
    last = (roi.end - affs.roi.begin - affs.voxel_size) // chunk
    steps = max(last - first)
    for index in sorted({round(i * steps / max(samples - 1, 1)) for i in range(samples)}):
        position = Coordinate(min(f + index, e) for f, e in zip(first, last))
        sample = Roi(affs.roi.begin + position * chunk, chunk).intersect(roi)
        where = f"{path} @ {sample} (nm), checked before the run"
        try:
            values = np.asarray(affs[sample])[:3]
        except Exception as error:  # a corrupt chunk: say where, before any work starts
            raise VolumeError(f"affinities {where}: cannot be read ({type(error).__name__}: {error})") from None
        check_affinity_values(values, where)


def absolute_graph_url(url: str) -> str:
    """A ``sqlite:///relative.db`` URL made absolute (workers may start elsewhere); other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix) :]).absolute())
    return url


def check_affinities(affs, path: str) -> None:
    """(C >= 3, z, y, x), channels first, dtype uint8 / float32 / float16 -> else a VolumeError naming each problem."""
    problems = []
    if len(affs.shape) != 4:
        problems.append(f"expected 4 axes (c, z, y, x), got {len(affs.shape)} (shape {tuple(affs.shape)})")
    elif affs.shape[0] < 3:
        problems.append(f"expected at least 3 channels (z, y, x nearest-neighbour affinities), got {affs.shape[0]}")
    if str(affs.dtype) not in AFFINITY_DTYPES:
        problems.append(f"dtype {affs.dtype} is not one of {', '.join(AFFINITY_DTYPES)}")
    if problems:
        raise VolumeError(f"affinities {path}: " + "; ".join(problems))


class SegmentDriver(Driver):
    """One ``affcons segment`` run of a resolved config."""

    command = "affcons segment"
    provenance_attr = "affcons_segment"
    config_file = RunDir.SEGMENT_CONFIG
    incomplete = "no segmentation was marked complete"

    def __init__(self, config: SegmentConfig, quiet: bool = False, stream=None):
        super().__init__(config, config.run_dir, quiet, stream)
        self.out = Path(config.out)

    # ---------------------------------------------------------------------------------------------- guards

    def check_existing(self) -> None:
        """Refuse existing state of another config (writes nothing)."""
        self.check_run_dir()
        for name in [FRAGMENTS] + [segmentation_name(t) for t in self.config.extract.thresholds]:
            self.check_output(f"{self.out / name}", read_attrs(self.out / name))

    def check_store(self, store) -> None:
        stored = store.get_meta(STORE_META_KEY)
        if stored is None:
            if store.count_nodes() or store.count_edges():
                raise OutputExistsError(
                    f"graph store {store.url} holds a RAG but no {STORE_META_KEY}; refusing to mix runs: use another "
                    "--graph"
                )
            meta = {"fingerprint": self.fingerprint, "fields": self.config.fingerprint_fields()}
            store.set_meta(STORE_META_KEY, meta)
        elif stored.get("fingerprint") != self.fingerprint:
            self.refuse(f"graph store {store.url}", stored.get("fields"))

    # ------------------------------------------------------------------------------------------------- run

    def run(self, dry_run: bool = False) -> int:
        from blockwise.plan import format_segment_plan, sample_density, segment_plan

        self.check_existing()  # refusals write nothing
        self.check_launcher()
        if dry_run:
            nodes_per_voxel, edges_per_voxel, _ = sample_density(self.config)
            plan = segment_plan(self.config, density=(nodes_per_voxel, edges_per_voxel))
            print(format_segment_plan(plan), file=self.stream)
            return 0
        self.lock()
        self.check_existing()  # again: no other driver can write here now
        started = self.start_summary(stages={}, tasks={})
        self.write_config()
        inject_fault("driver", -1, "after-config")
        with self.warm_pool():  # the pool's processes load their kernels while this one prepares the outputs
            return self._prepare_and_run(started)

    def _prepare_and_run(self, started: float) -> int:
        import daisy.logging

        daisy.logging.set_log_basedir(str(self.run_dir.logs))
        from affcons.store import open_store

        with open_store(self.config.graph_url(), "a", self.config.histogram_bins) as store:
            self.check_store(store)
        inject_fault("driver", -1, "after-store")
        return self.run_recorded(self._run_steps, started, self.create_fragments(), started)

    def _run_steps(self, fresh_fragments: bool, started: float) -> int:
        reports = []
        agglomerate = GlobalAgglomeration(self.config)
        # while the edges step runs, the driver loads the compiled merge loop of the global agglomeration
        prepare = agglomerate.warm_up if self.config.agglomerate.method == "global" else None
        for step, while_waiting in ((FragmentsStep(self.config), None), (EdgesStep(self.config), prepare)):
            report = self._run_blockwise(step, reset=fresh_fragments, while_waiting=while_waiting)
            reports.append(report)
            if not report.ok:
                return self.fail([report])
        self.set_complete(FRAGMENTS)
        from affcons.store import open_store

        with open_store(self.config.graph_url(), "r", self.config.histogram_bins) as store:
            self.summary["nodes"], self.summary["edges"] = store.count_nodes(), store.count_edges()

        redone = any(r.completed > r.skipped for r in reports)
        info = None if redone else agglomerate.done(self.fingerprint)
        start = time.time()
        if redone:  # the RAG changed: state files and done markers of earlier hierarchical levels are stale
            self._forget_hierarchy()
        if info is None and self.config.agglomerate.method == "hierarchical":
            failed, info = self.run_hierarchy()
            if failed is not None:
                self.summary["stages"]["agglomerate"] = {"wall_s": round(time.time() - start, 3), **info}
                return self.fail([failed])
            info["reused"] = False
            inject_fault("driver", -1, "after-merge-tree")
        elif info is None:
            self.say(f"agglomerate: reading {self.summary['edges']} edges from {self.config.public_dump()['graph']}")
            info = agglomerate.run(self.fingerprint)
            info["reused"] = False
            inject_fault("driver", -1, "after-merge-tree")
        else:
            info["reused"] = True
        self.summary["stages"]["agglomerate"] = {"wall_s": round(time.time() - start, 3), **info}
        if info.get("method") == "hierarchical" and not info["reused"]:
            self.say(
                f"agglomerate: {info['nodes']} nodes, {info['edges']} edges, {info['merges']} merges from "
                f"{info['states']} block states of {len(info['levels'])} level(s) ({self.run_dir.merge_tree}); "
                f"largest level worker {max(r['peak_rss_bytes'] for r in info['levels']) / 1e6:.0f} MB peak RSS, "
                f"assembly {info['assembly_peak_rss_bytes'] / 1e6:.0f} MB"
            )
        else:
            self.say(
                f"agglomerate: {info['nodes']} nodes, {info['edges']} edges, {info['merges']} merges "
                f"({'reused ' if info['reused'] else ''}{self.run_dir.merge_tree})"
                + (
                    f"; edge table {info['edge_table_bytes_per_edge']:.0f} B/edge, merge tree model "
                    f"{info['merge_tree_model_bytes_per_edge']} B/edge, measured peak growth "
                    f"{info['measured_bytes_per_edge']:.0f} B/edge"
                    if "edge_table_bytes_per_edge" in info
                    else ""
                )
            )

        thresholds = self.config.extract.thresholds
        pending = [t for t in thresholds if not self.segmentation_complete(t)]
        start = time.time()
        segments = agglomerate.write_luts(thresholds)
        self.summary["segments"] = segments
        self.summary["thresholds_reused"] = [threshold_name(t) for t in thresholds if t not in pending]
        inject_fault("driver", -1, "after-luts")
        if pending:
            fresh = [self.create_segmentation(t) for t in pending]
            inject_fault("driver", -1, "after-segmentations")
            report = self._run_blockwise(ExtractStep(self.config, thresholds=pending), reset=any(fresh), start=start)
            if not report.ok:
                return self.fail([report])
            for threshold in pending:
                self.set_complete(segmentation_name(threshold))
        else:
            self.summary["stages"]["extract"] = {"wall_s": round(time.time() - start, 3), "reused": True}
        self.summary["status"] = "complete"
        outputs = ", ".join(
            f"{self.out / segmentation_name(t)} ({segments[threshold_name(t)]} segments)" for t in thresholds
        )
        self.say(f"done in {time.time() - started:.1f} s: {outputs}; summary: {self.run_dir.summary}")
        return 0

    def run_hierarchy(self):
        """The levels of the hierarchical agglomeration, one daisy task each (resuming from their done markers), then
        the merge tree from their states. With a worker memory budget, a level whose largest block's estimate
        exceeds it becomes the top and this process finishes it. Returns ``(report of the failed level or None,
        info)``; ``info["stop"]`` says which level was the top, in which process, and why."""
        from blockwise.steps.hierarchy import HierarchicalAgglomeration

        hierarchy = HierarchicalAgglomeration(self.config)
        budget = self.config.agglomerate.worker_memory_bytes
        execution, levels, level, estimate = self.config.execution, [], 0, None
        while level < len(hierarchy.steps):
            step, start = hierarchy.steps[level], time.time()
            estimate = hierarchy.estimate(level)
            if budget is not None and estimate is not None and estimate["estimated_block_bytes"] > budget:
                step = hierarchy.stop_at(level)
                self.say(
                    f"{step.task_id}: the largest block of level {level} needs "
                    f"~{estimate['estimated_block_bytes'] / 1e6:.0f} MB, over the worker budget of {budget / 1e6:.0f} "
                    f"MB: this process finishes the residual (~{estimate['estimated_finish_bytes'] / 1e6:.0f} MB)"
                )
                report = self._finish_in_driver(step)
            else:
                self.say(
                    f"{step.task_id}: {step.num_blocks} block(s) of up to {step.cell if not step.is_top else 'all'} "
                    f"fragment blocks per axis, {execution.workers} worker(s), launcher {execution.launcher.type}"
                )
                report = self.run_step(step, {"cpu": 1})
            self.summary["tasks"][step.task_id] = report.as_dict()
            levels.append({**hierarchy.level_record(step, start), **(estimate or {})})
            if not report.ok:
                return report, {"method": "hierarchical", "levels": levels}
            inject_fault("driver", -1, f"after-{step.task_id}")
            level += 1
        return None, hierarchy.assemble(self.fingerprint, levels, hierarchy.stop_record(estimate))

    def _finish_in_driver(self, step):
        """The one block of a top level ``step`` run in this process (as a worker runs it: timer record, error record,
        fault points), unless its record and state exist; its ``TaskReport``."""
        from blockwise.runner import TaskReport
        from blockwise.timers import recorded_blocks
        from blockwise.worker import process

        if 0 in recorded_blocks(step.timers_dir()) and step.state_path(0).is_file():
            return TaskReport(step.task_id, total=1, completed=1, skipped=1)
        step.setup()
        try:
            process(step, step.roi)
        except Exception as error:
            failed = {"block": 0, "roi": str(step.roi), "error": f"{type(error).__name__}: {error}"}
            return TaskReport(step.task_id, total=1, failed=1, failed_blocks=[failed])
        finally:
            step.teardown()
        return TaskReport(step.task_id, total=1, completed=1)

    def _forget_hierarchy(self) -> None:
        """Remove the state files, done markers, timer and error records of every hierarchical level (of an earlier
        RAG, or of another stop level)."""
        import shutil

        shutil.rmtree(self.run_dir.hierarchy, ignore_errors=True)
        for kind in ("tracking", "timers", "errors"):
            for directory in (self.run_dir / kind).glob("hierarchy_*"):
                shutil.rmtree(directory, ignore_errors=True)

    def _run_blockwise(self, step, reset: bool, start: float | None = None, while_waiting=None):
        """One step on one CPU per worker, its stage record in the summary (``while_waiting``: see
        :meth:`blockwise.runner.Driver.run_step`)."""
        start = time.time() if start is None else start
        execution = self.config.execution
        self.say(
            f"{step.task_id}: {step.num_blocks} blocks, {execution.workers} worker(s), launcher "
            f"{execution.launcher.type}"
        )
        report = self.run_step(step, {"cpu": 1}, reset=reset, while_waiting=while_waiting)
        self.summary["tasks"][step.task_id] = report.as_dict()
        self.summary["stages"][step.name] = self.stage_record(start, step)
        return report

    # ----------------------------------------------------------------------------------------------- outputs

    def create_fragments(self) -> bool:
        """Create the run's face sections (:mod:`blockwise.faces`), then ``OUT.zarr/fragments``, unless the
        fragments exist (checked before); True if they were created now. The fragments come last: their existence
        marks both created, so a crash in between creates both anew on the next run."""
        if read_attrs(self.out / FRAGMENTS) is not None:
            return False
        ids = FragmentsStep(self.config).ids_dtype
        affs = box_for(self.config.affs, self.config.affs_offset, self.config.voxel_size)
        face_sections(self.config).create(ids, affs.array.dtype)
        affs.close()
        inject_fault("driver", -1, "after-links")
        self._create(self.out / FRAGMENTS, dtype=ids)
        inject_fault("driver", -1, "after-fragments")
        return True

    def create_segmentation(self, threshold: float) -> bool:
        name = segmentation_name(threshold)
        if read_attrs(self.out / name) is not None:
            return False
        import zarr

        fragments_dtype = zarr.open_array(str(self.out / FRAGMENTS), mode="r").dtype  # uint64 in older runs
        self._create(self.out / name, dtype=fragments_dtype, threshold=threshold)
        return True

    def _create(self, path, dtype, mode: str = "w-", **extra) -> None:
        """Create the zarr dataset ``path`` (``OUT.zarr/NAME``) on the run's grid."""
        from funlib.geometry import Roi

        from affcons.io import create_volume

        create_volume(
            path,
            Roi(self.config.roi_offset, self.config.roi_shape),
            self.config.voxel_size,
            dtype,
            chunk_shape=self.config.chunk_shape,
            compression=self.config.compression,
            mode=mode,
            attrs=self.provenance(**extra),
        )

    def set_complete(self, name: str) -> None:
        from blockwise.layout import update_attrs

        update_attrs(self.out / name, {"complete": True})

    def segmentation_complete(self, threshold: float) -> bool:
        attrs = read_attrs(self.out / segmentation_name(threshold))
        return bool(attrs and attrs.get("complete") is True)
