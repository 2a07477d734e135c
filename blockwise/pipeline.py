"""The driver of ``affcons segment``: resolve and check the config, guard existing outputs, run the four steps on
daisy 2, summarise, and turn failures into an exit code.

Order of a run (``Pipeline.run``):

1. Checks that write nothing: the run directory's ``config.yaml``, ``OUT.zarr/fragments``, the requested
   ``OUT.zarr/segmentation_<t>`` and the graph store must be absent or carry this config's fingerprint (the
   fields of :meth:`SegmentConfig.fingerprint_fields`); otherwise :class:`OutputExistsError` lists the fields that
   differ (exit code 2). ``--dry-run`` stops here and prints the plan.
2. ``config.yaml`` (the resolved config), outputs created with provenance attributes and ``complete: false``.
3. ``fragments`` + ``edges`` as one daisy pipeline (an edges block starts as soon as the fragment blocks below it
   are done), then ``agglomerate`` in this process (skipped when ``merge_tree.npz`` of this fingerprint exists and
   no fragment or edge block was redone), then one ``extract`` task for the thresholds not yet complete.
4. Only when every block of every task succeeded: ``complete: true`` on each new segmentation, exit code 0.
   Otherwise exit code 1 and the failed blocks per task (grid index and ROI) on stderr and in ``summary.json``.

Re-running resumes through daisy's done markers (``RUN_DIR/tracking/<task_id>``): every block is deterministic and
overwrites its own chunks and store rows, so a resumed run -- also after SIGKILL of this driver -- ends with the
same bytes as an uninterrupted one.
"""

import datetime
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import affcons
from affcons.config import dump_config, load_config
from affcons.errors import ConfigError, OutputExistsError, VolumeError
from blockwise.config import (
    AFFINITY_DTYPES,
    ExecutionConfig,
    SegmentConfig,
    fingerprint_differences,
    threshold_name,
)
from blockwise.extract import segmentation_name

#: daisy's accepted ``fit`` values (anything else panics inside daisy later, so it is checked here).
DAISY_FITS = ("valid", "overhang", "shrink")
FIT = "shrink"
#: Attribute of every output holding the provenance of this module.
PROVENANCE_ATTR = "affcons_segment"
#: Store meta key of the fingerprint.
STORE_META_KEY = "segment_fingerprint"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def default_run_dir(out: str | Path) -> Path:
    """``/data/out.zarr`` -> ``/data/out.affcons-run``."""
    out = Path(out).absolute()
    return out.parent / f"{out.stem}.affcons-run"


def absolute_graph_url(url: str) -> str:
    """A ``sqlite:///relative.db`` URL made absolute (workers may start elsewhere); other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix) :]).absolute())
    return url


def resolve(options: dict, voxel_size_override=None, block_voxels=None, context_voxels=None) -> SegmentConfig:
    """A complete :class:`SegmentConfig` from user options (config-file keys, nm) and the affinities.

    ``voxel_size_override`` (``--voxel-size``) must agree with the stored voxel size when there is one;
    ``block_voxels``/``context_voxels`` (``--block-size``/``--context``, voxels) are converted to nm here, once.
    Opens the affinities to check channels (>= 3), dtype (uint8, float32, float16) and voxel size.
    """
    from affcons.io import open_volume, read_voxel_size

    options = dict(options)
    for key in ("affs", "out"):
        if not options.get(key):
            raise ConfigError(f"missing {key}: pass --{key} or set '{key}' in the config file")
    affs_path = options["affs"]
    stored = read_voxel_size(affs_path)
    if voxel_size_override is not None and stored is not None and tuple(stored) != tuple(voxel_size_override):
        raise VolumeError(
            f"{affs_path}: stored voxel size {tuple(stored)} nm differs from --voxel-size "
            f"{tuple(voxel_size_override)} nm"
        )
    voxel_size = tuple(voxel_size_override or options.get("voxel_size") or (stored and tuple(stored)) or ())
    if not voxel_size:
        raise VolumeError(f"{affs_path} has no voxel size attribute; pass --voxel-size Z Y X (nm)")
    if stored is not None and tuple(stored) != voxel_size:
        raise VolumeError(
            f"{affs_path}: stored voxel size {tuple(stored)} nm differs from the configured {voxel_size} nm"
        )
    affs = open_volume(affs_path, voxel_size=voxel_size)
    check_affinities(affs, affs_path)
    affs_roi = affs.roi
    options["voxel_size"] = voxel_size
    options["affs_offset"] = tuple(affs_roi.offset)
    if block_voxels is not None:
        options["block_size"] = tuple(b * s for b, s in zip(block_voxels, voxel_size))
    if context_voxels is not None:
        options["context"] = tuple(c * s for c, s in zip(context_voxels, voxel_size))
    options.setdefault("block_size", tuple(b * s for b, s in zip((64, 256, 256), voxel_size)))
    options.setdefault("context", tuple(c * s for c, s in zip((8, 32, 32), voxel_size)))
    from funlib.geometry import Roi

    offset = tuple(options.get("roi_offset") or affs_roi.offset)
    shape = tuple(options.get("roi_shape") or (affs_roi.end - offset if options.get("roi_offset") else affs_roi.shape))
    roi = Roi(offset, shape)
    if any(o % s for o, s in zip(offset + shape, voxel_size + voxel_size)):
        raise ConfigError(f"ROI offset {offset} / shape {shape} nm are not multiples of the voxel size {voxel_size} nm")
    if roi.empty or not affs_roi.contains(roi):
        raise ConfigError(f"ROI {roi} (nm) is empty or not inside the affinities' ROI {affs_roi} ({affs_path})")
    options["roi_offset"], options["roi_shape"] = offset, shape
    block = tuple(b // s for b, s in zip(options["block_size"], voxel_size))
    if options.get("chunk_shape") is None:
        options["chunk_shape"] = block
    chunks = tuple(options["chunk_shape"])
    if len(chunks) == 3 and min(chunks) > 0 and any(b % c for b, c in zip(block, chunks)):
        raise ConfigError(
            f"block size {block} voxels is not a multiple of the output chunk shape {chunks} voxels: blocks would "
            "share chunks, and zarr has no locking (choose a block size that is a multiple of the chunk shape, or a "
            "chunk shape that divides the block size)"
        )
    options["affs"] = str(Path(affs_path).absolute()) if "://" not in affs_path else affs_path
    options["out"] = str(Path(options["out"]).absolute())
    options["run_dir"] = str(Path(options.get("run_dir") or default_run_dir(options["out"])).absolute())
    options["graph"] = absolute_graph_url(options.get("graph") or f"sqlite:///{Path(options['run_dir']) / 'rag.db'}")
    if not str(options["out"]).endswith(".zarr"):
        raise ConfigError(f"--out must be a zarr container ending in .zarr, got {options['out']}")
    from affcons.config import validate

    return validate(SegmentConfig, options, "segment options")


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


@dataclass
class TaskReport:
    """What happened to one daisy task in this run."""

    task_id: str
    total: int = 0
    completed: int = 0
    skipped: int = 0
    failed: int = 0
    orphaned: int = 0
    worker_restarts: int = 0
    failed_blocks: list = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.completed == self.total and not self.failed and not self.orphaned

    def as_dict(self) -> dict:
        """The task's entry in ``summary.json``."""
        return {
            "blocks": self.total,
            "completed": self.completed,
            "skipped": self.skipped,
            "processed": self.completed - self.skipped,
            "failed": self.failed,
            "orphaned": self.orphaned,
            "worker_restarts": self.worker_restarts,
            "failed_blocks": self.failed_blocks,
            "error": self.error,
        }

    def failure_line(self) -> str:
        """``task T: 1 failed, 0 orphaned, 3/4 done; failed blocks ...; error ...`` (for stderr and the summary)."""
        line = (
            f"task {self.task_id}: {self.failed} failed, {self.orphaned} orphaned, {self.completed}/{self.total} done"
        )
        if self.failed_blocks:
            line += "; failed blocks (grid index @ write ROI nm): " + ", ".join(
                f"{b['block']} @ {b['roi']}" for b in self.failed_blocks
            )
        if self.error:
            line += f"; error: {self.error}"
        return line


# ------------------------------------------------------------------------------------------------------ daisy


def make_task(step, process_function, execution: ExecutionConfig, run_dir: Path, requires: dict | None = None):
    """The daisy task of one blockwise step: ``fit="shrink"`` (checked against daisy's accepted values),
    ``read_write_conflict=False``, the execution's workers, retries and explicit block timeout, done markers in
    ``run_dir/tracking/<task_id>``, and ``requires`` per worker (default ``{"cpu": 1}``; ``{"gpu": 1}`` for
    prediction on GPUs)."""
    import daisy.v2 as daisy

    if FIT not in DAISY_FITS:
        raise ConfigError(f"daisy fit {FIT!r} is not one of {DAISY_FITS}")
    total, read, write = step.rois()
    return daisy.Task(
        step.task_id,
        total,
        read,
        write,
        process_function,
        read_write_conflict=False,
        fit=FIT,
        max_workers=execution.workers,
        max_retries=execution.max_retries,
        timeout=execution.block_timeout_s,
        tracking_path=str(Path(run_dir) / "tracking" / step.task_id),
        max_worker_restarts=execution.max_worker_restarts,
        requires=dict(requires or {"cpu": 1}),
    )


def run_task(
    step,
    process_function,
    execution: ExecutionConfig,
    run_dir: Path,
    requires: dict | None = None,
    reset: bool = False,
    progress: bool | None = None,
) -> TaskReport:
    """Run one blockwise step as one daisy task (:func:`make_task`) with ``requires`` per worker and
    ``execution.workers`` times that in resources; ``reset`` voids its done markers first; ``progress`` defaults
    to ``execution.progress``. Returns what happened to its blocks: counts, failed blocks by grid index and ROI,
    and an error when daisy abandoned the task."""
    import daisy.v2 as daisy

    requires = dict(requires or {"cpu": 1})
    task = make_task(step, process_function, execution, run_dir, requires)
    if reset:
        task.reset()
    report = TaskReport(step.task_id, total=step.num_blocks)
    states = {}
    try:
        states = daisy.run_blockwise(
            task,
            multiprocessing=True,
            resources={name: amount * execution.workers for name, amount in requires.items()},
            progress=execution.progress if progress is None else progress,
            return_states=True,
            summary=False,
        )
    except RuntimeError as exception:  # daisy abandons a task after max_worker_restarts dirty exits
        text = str(exception).strip()
        report.error = text.splitlines()[0] if text else repr(exception)
    state = states.get(step.task_id)
    if state is not None:
        report.total = state.total_block_count
        report.completed = state.completed_count
        report.skipped = state.skipped_count
        report.failed = state.failed_count
        report.orphaned = state.orphaned_count
        report.worker_restarts = state.worker_restart_count
        if state.abandoned:
            report.error = f"abandoned: {state.abandon_reason}"
    try:
        failed = task.failed_blocks()
    except Exception as exception:  # an unreadable tracking store: say so, and still fail
        failed = []
        report.error = (report.error or "") + f" (failed blocks unavailable: {exception})"
    report.failed_blocks = [
        {"block": step.block_index(b.write_roi), "roi": str(b.write_roi), "daisy_id": list(b.block_id)} for b in failed
    ]
    report.failed = max(report.failed, len(report.failed_blocks))
    return report


# ----------------------------------------------------------------------------------------------------- driver


def dataset_attrs(directory: str | Path) -> dict | None:
    """Attributes of the zarr dataset at ``directory``; ``{}`` for a non-v3 or unreadable node, None if nothing is
    there."""
    directory = Path(directory)
    metadata = directory / "zarr.json"
    if metadata.is_file():
        return json.loads(metadata.read_text()).get("attributes", {})
    if directory.exists():
        return {}
    return None


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, written to a temporary file and renamed (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


class Driver:
    """What the drivers of ``affcons segment`` (:class:`Pipeline`) and ``affcons predict``
    (:class:`blockwise.predict.PredictJob`) share: the resolved config and its fingerprint, messages, provenance
    attributes, the guards against state of another config, failure reports and the summary file."""

    #: The command, for messages (``affcons segment``).
    command = "affcons segment"
    #: Attribute of every output holding the provenance of this command.
    provenance_attr = PROVENANCE_ATTR
    #: The resolved config in the run directory.
    config_file = CONFIG_FILE
    #: What a failed run leaves unmarked (for the error message).
    incomplete = "no segmentation was marked complete"

    def __init__(self, config, quiet: bool = False, stream=None):
        self.config = config
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.run_dir = Path(config.run_dir)
        self.fingerprint = config.fingerprint()
        self.summary: dict = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def public_config(self) -> dict:
        """The resolved config as stored in outputs and the summary."""
        return self.config.model_dump(mode="json")

    def provenance(self, **extra) -> dict:
        return {
            self.provenance_attr: {
                "fingerprint": self.fingerprint,
                "fingerprint_fields": self.config.fingerprint_fields(),
                "config": self.public_config(),
                "affcons_version": affcons.__version__,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                **extra,
            },
            "complete": False,
        }

    def _refuse(self, where: str, stored_fields: dict | None) -> None:
        if stored_fields is None:
            raise OutputExistsError(
                f"{where} exists but was not written by {self.command} (no {self.provenance_attr} attribute); "
                "refusing to overwrite it: choose another --out / --run-dir or remove it"
            )
        differences = fingerprint_differences(stored_fields, self.config.fingerprint_fields())
        raise OutputExistsError(
            f"{where} was written with a different config; refusing to overwrite it. Differences (stored -> "
            f"requested): {'; '.join(differences) or 'none listed'}. Use another --out and --run-dir, or remove them"
        )

    def check_run_dir(self) -> None:
        """The run directory must be absent, empty, or hold this config's fingerprint (writes nothing)."""
        config_path = self.run_dir / self.config_file
        if config_path.is_file():
            stored = load_config(type(self.config), config_path)
            if stored.fingerprint() != self.fingerprint:
                self._refuse(f"run directory {self.run_dir}", stored.fingerprint_fields())
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise OutputExistsError(f"run directory {self.run_dir} exists, is not empty and has no {self.config_file}")

    def check_output(self, where: str, attrs: dict | None) -> bool:
        """Refuse an existing output (``attrs`` from :func:`dataset_attrs`) of another config or command; True if
        the output exists (with this config's fingerprint)."""
        if attrs is None:
            return False
        stored = attrs.get(self.provenance_attr)
        if stored is None or stored.get("fingerprint") != self.fingerprint:
            self._refuse(where, None if stored is None else stored.get("fingerprint_fields"))
        return True

    def fail(self, reports: list[TaskReport]) -> int:
        """Record and print the failed tasks; returns exit code 1."""
        lines = [report.failure_line() for report in reports if not report.ok]
        self.summary["status"] = "failed"
        self.summary["failures"] = lines
        message = f"blocks failed; {self.incomplete}. Re-run the same command to retry them.\n  "
        message += "\n  ".join(lines) + f"\n  worker logs: {self.run_dir / 'logs'}"
        print(f"{self.command}: error: {message}", file=sys.stderr, flush=True)
        return 1

    def write_summary(self) -> None:
        if self.run_dir.exists():
            write_json(self.run_dir / SUMMARY_FILE, self.summary)


class Pipeline(Driver):
    """One ``affcons segment`` run of a resolved config."""

    def __init__(self, config: SegmentConfig, quiet: bool = False, stream=None):
        super().__init__(config, quiet, stream)
        self.out = Path(config.out)

    # ------------------------------------------------------------------------------------------------- guards

    def public_config(self) -> dict:
        """The resolved config with any password in the graph URL replaced by ``***`` (for outputs and logs)."""
        from affcons.store.base import redact

        data = self.config.model_dump(mode="json")
        data["graph"] = redact(data["graph"])
        return data

    def check_existing(self) -> None:
        """Refuse existing state of another config (writes nothing)."""
        self.check_run_dir()
        names = ["fragments"] + [segmentation_name(t) for t in self.config.extract.thresholds]
        for name in names:
            self.check_output(f"{self.out / name}", self._dataset_attrs(name))

    def _dataset_attrs(self, name: str) -> dict | None:
        return dataset_attrs(self.out / name)

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
            self._refuse(f"graph store {store.url}", stored.get("fields"))

    # ---------------------------------------------------------------------------------------------------- run

    def run(self, dry_run: bool = False) -> int:
        from blockwise.plan import format_plan, make_plan

        self.check_existing()
        if dry_run:
            print(format_plan(make_plan(self.config)), file=self.stream)
            return 0
        started = time.time()
        self.summary = {
            "fingerprint": self.fingerprint,
            "affcons_version": affcons.__version__,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": self.public_config(),
            "stages": {},
            "tasks": {},
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.config, self.run_dir / CONFIG_FILE)
        import daisy.logging

        daisy.logging.set_log_basedir(str(self.run_dir / "logs"))
        from affcons.store import open_store

        with open_store(self.config.graph, "a", self.config.histogram_bins) as store:
            self.check_store(store)
        fresh_fragments = self.create_fragments()
        try:
            status = self._run_steps(fresh_fragments, started)
        finally:
            self.summary["wall_s"] = round(time.time() - started, 3)
            self.write_summary()
        return status

    def _run_steps(self, fresh_fragments: bool, started: float) -> int:
        from blockwise.agglomerate import AgglomerateStep
        from blockwise.registry import build_step

        reports = []
        for name in ("fragments", "edges"):
            step = build_step(self.config, name)
            start = time.time()
            report = self.run_task(step, reset=fresh_fragments)
            self.summary["stages"][name] = self.stage_record(start, step)
            reports.append(report)
            if not report.ok:
                return self.fail([report])
        self.set_attrs("fragments", {"complete": True})
        from affcons.store import open_store

        with open_store(self.config.graph, "r", self.config.histogram_bins) as store:
            self.summary["nodes"], self.summary["edges"] = store.count_nodes(), store.count_edges()

        agglomerate = AgglomerateStep(self.config)
        redone = any(r.completed > r.skipped for r in reports)
        info = None if redone else agglomerate.done(self.fingerprint)
        start = time.time()
        if info is None:
            self.say(f"agglomerate: reading {self.summary['edges']} edges from {self.public_config()['graph']}")
            info = agglomerate.run(self.fingerprint)
            info["reused"] = False
        else:
            info["reused"] = True
        self.summary["stages"]["agglomerate"] = {"wall_s": round(time.time() - start, 3), **info}
        self.say(
            f"agglomerate: {info['nodes']} nodes, {info['edges']} edges, {info['merges']} merges "
            f"({'reused ' if info['reused'] else ''}{agglomerate.tree_path}); edge table "
            f"{info['edge_table_bytes_per_edge']:.0f} B/edge, merge tree model "
            f"{info['merge_tree_model_bytes_per_edge']} B/edge, measured peak growth "
            f"{info['measured_bytes_per_edge']:.0f} B/edge"
        )

        thresholds = self.config.extract.thresholds
        pending = [t for t in thresholds if not self.segmentation_complete(t)]
        start = time.time()
        segments = agglomerate.write_luts(thresholds)
        self.summary["segments"] = segments
        self.summary["thresholds_reused"] = [threshold_name(t) for t in thresholds if t not in pending]
        if pending:
            fresh = [self.create_segmentation(t) for t in pending]
            extract_step = build_step(self.config, "extract", thresholds=pending)
            report = self.run_task(extract_step, reset=any(fresh))
            self.summary["stages"]["extract"] = self.stage_record(start, extract_step)
            if not report.ok:
                return self.fail([report])
            for threshold in pending:
                self.set_attrs(segmentation_name(threshold), {"complete": True})
        else:
            self.summary["stages"]["extract"] = {"wall_s": round(time.time() - start, 3), "reused": True}
        self.summary["status"] = "complete"
        self.say(
            f"done in {time.time() - started:.1f} s: "
            + ", ".join(
                f"{self.out / segmentation_name(t)} ({segments[threshold_name(t)]} segments)" for t in thresholds
            )
            + f"; summary: {self.run_dir / SUMMARY_FILE}"
        )
        return 0

    # ------------------------------------------------------------------------------------------------- daisy

    def run_task(self, step, reset: bool = False) -> TaskReport:
        """Run one blockwise step as a daisy task (:func:`run_task`, one CPU per worker); report what happened to
        its blocks.

        Steps run one after the other (``edges`` only once every fragment block is done), not as a daisy pipeline
        ``a + b``: daisy 2.0.0 mis-schedules the downstream task of such a pipeline when its read ROI extends on
        one side only (blocks run several times, others never, and the run still reports success; see
        ``docs/design/blockwise.md``). As a second line of defence every task's blocks are checked against the
        block grid afterwards (:meth:`check_coverage`).
        """
        from blockwise.launchers import process_function

        execution = self.config.execution
        if reset:
            shutil.rmtree(step.timers_dir(), ignore_errors=True)
        self.say(
            f"{step.task_id}: {step.num_blocks} blocks, {execution.workers} worker(s), launcher "
            f"{execution.launcher.type}"
        )
        function = process_function(step, execution.launcher, str(self.run_dir / CONFIG_FILE))
        report = run_task(
            step,
            function,
            execution,
            self.run_dir,
            {"cpu": 1},
            reset=reset,
            progress=execution.progress and not self.quiet,
        )
        if report.ok:
            report.error = self.check_coverage(step, report)
        self.summary["tasks"][step.task_id] = report.as_dict()
        return report

    def check_coverage(self, step, report: TaskReport) -> str | None:
        """None if the block records of ``step`` cover its whole block grid, else a message naming missing blocks.

        Every processed block leaves a timer record, so a block that daisy counts as done but that never ran (a
        scheduler fault) shows up here instead of as silently missing output.
        """
        if report.total != step.num_blocks:
            return f"daisy scheduled {report.total} blocks, the block grid {step.grid_shape} has {step.num_blocks}"
        seen = recorded_blocks(step.timers_dir())
        missing = sorted(set(range(step.num_blocks)) - seen)
        if missing:
            shown = ", ".join(f"{b} @ {step.block_roi(b)}" for b in missing[:10])
            return f"{len(missing)} block(s) reported done but never processed: {shown}"
        return None

    def stage_record(self, start: float, step) -> dict:
        """Wall time of a stage plus the block timers of its step summed over blocks (last attempt per block)."""
        return {
            "wall_s": round(time.time() - start, 3),
            "task": step.task_id,
            **summarise_timers(step.timers_dir(), since=start),
        }

    # ----------------------------------------------------------------------------------------------- outputs

    def create_fragments(self) -> bool:
        """Create ``OUT.zarr/fragments`` and the run's face-link bits unless the fragments exist (checked before);
        True if they were created now."""
        from blockwise.fragments import links_box

        if self._dataset_attrs("fragments") is not None:
            return False
        self._create(self.out / "fragments")
        self._create(links_box(self.config).path, dtype=np.uint8, mode="w")
        return True

    def create_segmentation(self, threshold: float) -> bool:
        name = segmentation_name(threshold)
        if self._dataset_attrs(name) is not None:
            return False
        self._create(self.out / name, threshold=threshold)
        return True

    def _create(self, path, dtype=np.uint64, mode: str = "w-", **extra) -> None:
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

    def set_attrs(self, name: str, attrs: dict) -> None:
        import zarr

        zarr.open_array(str(self.out / name), mode="r+").attrs.update(attrs)

    def segmentation_complete(self, threshold: float) -> bool:
        attrs = self._dataset_attrs(segmentation_name(threshold))
        return bool(attrs and attrs.get("complete") is True)


def read_timer_records(directory: Path) -> dict[int, dict]:
    """The last timer record per block index of a task's ``timers`` directory."""
    last: dict[int, dict] = {}
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a killed worker
                continue
            if record["block"] not in last or record["end"] >= last[record["block"]]["end"]:
                last[record["block"]] = record
    return last


def recorded_blocks(directory: Path) -> set[int]:
    return set(read_timer_records(directory))


def summarise_timers(directory: Path, since: float | None = None) -> dict:
    """Sum the per-block timer records of a task (the last record per block): seconds of read/compute/write,
    blocks, counters; ``processed_this_run`` counts blocks that started at or after ``since``, and ``span_s`` is
    the time from the first start to the last end among them."""
    last = read_timer_records(directory)
    totals: dict = {"blocks": len(last), "read_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    for record in last.values():
        for key, value in record.items():
            if key in ("block", "start", "end", "pid"):
                continue
            totals[key] = totals.get(key, 0) + value
    recent = [r for r in last.values() if since is None or r["start"] >= since]
    totals["processed_this_run"] = len(recent)
    totals["span_s"] = round(max(r["end"] for r in recent) - min(r["start"] for r in recent), 3) if recent else 0.0
    totals["workers_seen"] = len({r["pid"] for r in recent})
    for key in ("read_s", "compute_s", "write_s"):
        totals[key] = round(totals[key], 3)
    return totals
