"""``affcons run -c CONFIG``: the main job. Raw volume -> affinities -> segmentations at the configured thresholds ->
(with ground truth) evaluation, in one run directory with one ``summary.json``.

    affcons run -c demo                 # configs/demo.yaml: the bundled ISBI volume, the committed demo model
    affcons run -c my_run.yaml --run-dir /scratch/run1 [--workers 4] [--gpus 0,1] [--dry-run]

Stages (each resumes: re-running the same command after an interruption continues where it stopped):

1. ``import``: a raw volume that is not zarr (HDF5) is copied into ``OUT.zarr/raw`` (:mod:`affcons.io`); zarr raw is
   used in place.
2. ``predict``: :class:`blockwise.predict.PredictJob` writes ``OUT.zarr/affs`` (and ``OUT.zarr/disagreement``);
   its run directory is ``RUN_DIR/predict``.
3. ``segment``: the blockwise segmentation pipeline (:class:`blockwise.pipeline.Pipeline`, called in this process)
   writes ``OUT.zarr/fragments`` and ``OUT.zarr/segmentation_<t>``; its run directory is ``RUN_DIR/segment`` and the
   graph store defaults to ``sqlite:///RUN_DIR/segment/rag.db``.
4. ``evaluate`` (if ``evaluate.ground_truth`` is set): VOI split/merge (nats) and ARAND of every segmentation in the
   evaluation ROI.

At the end the outputs are described for neuroglancer: paths, shapes, voxel sizes and offsets are printed and stored
in the summary, and ``RUN_DIR/neuroglancer.py`` is a script that opens them in a local neuroglancer viewer.

Config files (:class:`JobConfig`) give lengths in nm (z, y, x) except ``patch``, ``margin`` and ``chunk_shape``
(voxels); relative paths are taken from the repository root, so ``affcons run -c demo`` works from any directory.
Exit codes: 0 done, 1 blocks failed in a stage (listed), 2 bad input or an existing output of another config.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Literal

import pydantic

from affcons.config import StrictModel
from affcons.errors import ConfigError
from blockwise.config import ExecutionConfig

Triple = tuple[int, int, int]
STAGES = ("import", "predict", "segment", "evaluate")


class JobPredict(StrictModel):
    """Prediction settings (see :class:`blockwise.predict.PredictConfig`)."""

    #: Training checkpoint (repository-relative or absolute).
    checkpoint: str
    #: Use the EMA weights (EMA runs only).
    use_ema: bool = False
    #: Which representation becomes the affinities; default: the best on the validation data.
    map: Literal["implicit", "explicit", "mean"] | None = None
    #: Output dtype.
    dtype: Literal["uint8", "float16"] = "uint8"
    #: ``all`` offsets or the ``short``-range three (all the segmentation uses).
    channels: Literal["all", "short"] = "all"
    #: Also write the per-voxel implicit/explicit disagreement map.
    disagreement: bool = True
    #: Network input patch and output margin, voxels (default: training crop and the automatic margin).
    patch: Triple | None = None
    margin: Triple | None = None
    #: Block, nm (default 4 x 8 x 8 tiles); output chunks, voxels (default 2 x 2 x 2 tiles).
    block_size: Triple | None = None
    chunk_shape: Triple | None = None
    #: Patches per forward pass (0 = automatic), precision and device (auto: bf16 on GPU).
    batch_size: int = pydantic.Field(0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: GPUs, one worker each (default: all visible); torch threads per CPU worker (0 = cores / workers).
    gpus: list[int] | None = None
    threads: int = pydantic.Field(0, ge=0)


class JobSegment(StrictModel):
    """Segmentation settings (see :class:`blockwise.config.SegmentConfig`)."""

    #: Merge thresholds; one ``OUT.zarr/segmentation_<t>`` each.
    thresholds: list[float] = pydantic.Field(min_length=1)
    #: Block and context, nm (defaults of ``affcons segment``: 64 x 256 x 256 and 8 x 32 x 32 voxels).
    block_size: Triple | None = None
    context: Triple | None = None
    #: Output chunks, voxels (default: the block).
    chunk_shape: Triple | None = None
    #: Watershed options (``fragments`` section of affcons segment).
    fragments: dict = {}
    #: Edge scoring (``agglomerate`` section of affcons segment).
    agglomerate: dict = {}
    #: Graph store URL (default ``sqlite:///RUN_DIR/segment/rag.db``).
    graph: str | None = None


class JobEvaluate(StrictModel):
    """Evaluation against dense ground truth (id 0 ignored)."""

    #: Ground-truth labels ``file.h5:name`` or ``gt.zarr/name`` (repository-relative or absolute).
    ground_truth: str
    #: Region scored, nm (default: the whole segmented region).
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None


class JobConfig(StrictModel):
    """A complete ``affcons run``."""

    #: Raw EM: ``file.h5:raw`` (imported to ``OUT.zarr/raw``) or ``in.zarr/raw`` (used in place).
    raw: str
    #: Voxel size of the raw, nm (only for raw without one).
    voxel_size: Triple | None = None
    #: Region to process, nm (default: the whole raw).
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None
    #: Run directory (default ``runs/<config name>`` in the repository).
    run_dir: str | None = None
    #: Output container (default ``RUN_DIR/out.zarr``).
    out: str | None = None
    #: Chunks of an imported raw, voxels.
    import_chunks: Triple = (32, 256, 256)
    predict: JobPredict
    segment: JobSegment
    evaluate: JobEvaluate | None = None
    #: Workers, launcher, timeouts and retries of the blockwise stages (``execution`` of affcons segment and
    #: affcons predict; with GPUs, prediction runs one worker per GPU).
    execution: ExecutionConfig = ExecutionConfig()


def resolve_path(path: str) -> str:
    """Repository-relative paths made absolute (``file.h5:name`` keeps its dataset)."""
    from affcons.train.config import resolve_path as resolve

    return str(resolve(path))


# ----------------------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="config name (configs/NAME.yaml) or path")
    parser.add_argument("--run-dir", help="run directory (default: the config's run_dir, else runs/<config name>)")
    parser.add_argument("--workers", type=int, help="override execution.workers")
    parser.add_argument("--gpus", help="GPU indices for prediction, e.g. 0,1")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override predict.device")
    parser.add_argument("--checkpoint", help="override predict.checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="check the config and print the plan; run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_job(args: argparse.Namespace) -> tuple[JobConfig, Path]:
    from affcons.config import load_config, resolve_config_path, validate
    from affcons.train.config import REPO_ROOT

    config = load_config(JobConfig, args.config)
    data = config.model_dump(mode="json")
    if args.workers is not None:
        data["execution"]["workers"] = args.workers
    if args.device is not None:
        data["predict"]["device"] = args.device
    if args.gpus is not None:
        try:
            data["predict"]["gpus"] = [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError:
            raise ConfigError(f"--gpus takes comma-separated indices like 0,1, got {args.gpus!r}") from None
        if data["predict"]["device"] == "auto":
            data["predict"]["device"] = "cuda"
    if args.checkpoint is not None:
        data["predict"]["checkpoint"] = str(Path(args.checkpoint).absolute())
    if args.quiet:
        data["execution"]["progress"] = False
    config = validate(JobConfig, data, f"{resolve_config_path(args.config)} with command-line overrides")
    if args.run_dir:
        run_dir = Path(args.run_dir).absolute()
    elif config.run_dir:
        run_dir = Path(resolve_path(config.run_dir))
    else:
        run_dir = REPO_ROOT / "runs" / resolve_config_path(args.config).stem
    return config, run_dir


def run(args: argparse.Namespace) -> int:
    config, run_dir = load_job(args)
    return Job(config, run_dir, quiet=args.quiet).run(dry_run=args.dry_run)


# ----------------------------------------------------------------------------------------------------- job


class Job:
    """One ``affcons run``: the four stages, the summary and the neuroglancer description."""

    def __init__(self, config: JobConfig, run_dir: Path, quiet: bool = False, stream=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.out = Path(config.out).absolute() if config.out else self.run_dir / "out.zarr"
        self.summary: dict = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def stage(self, index: int, name: str, detail: str) -> None:
        self.say(f"[{index}/{len(STAGES)}] {name}: {detail}")

    # ---------------------------------------------------------------------------------------------- stages

    def import_raw(self) -> str:
        """The raw as zarr: HDF5 is copied into ``OUT.zarr/raw`` once (a finished copy is reused)."""
        from affcons.io import copy_volume, create_volume, open_volume, split_dataset_path

        raw = resolve_path(self.config.raw)
        volume = split_dataset_path(raw)
        if not volume.is_hdf5:
            self.stage(1, "import", f"{raw} is zarr, used in place")
            return raw
        target = f"{self.out}/raw"
        source = open_volume(raw, voxel_size=self.config.voxel_size)
        marker = {
            "source": raw,
            "shape": list(source.shape),
            "voxel_size": list(source.voxel_size),
            "offset": list(source.roi.offset),
        }
        metadata = self.out / "raw" / "zarr.json"
        if metadata.is_file():
            attrs = json.loads(metadata.read_text()).get("attributes", {})
            if attrs.get("affcons_import") == marker and attrs.get("complete") is True:
                self.stage(1, "import", f"{target} exists (copied from {raw}), reused")
                return target
            from affcons.errors import OutputExistsError

            if attrs.get("affcons_import") != marker:
                raise OutputExistsError(
                    f"{target} exists and was not imported from {raw} by this job; refusing to "
                    "overwrite it: use another run directory or out"
                )
        self.stage(1, "import", f"{raw} -> {target}")
        chunks = tuple(min(c, s) for c, s in zip(self.config.import_chunks, source.shape))
        target_array = create_volume(
            target,
            source.roi,
            source.voxel_size,
            source.dtype,
            chunk_shape=chunks,
            mode="w",
            attrs={"affcons_import": marker, "complete": False},
        )
        copy_volume(source, target_array)
        from blockwise.predict import set_attrs

        set_attrs(target, {"complete": True})
        return target

    def execution_options(self) -> dict:
        """The job's ``execution`` section for the predict and segment stages (no progress bars with --quiet)."""
        execution = self.config.execution.model_dump(mode="json")
        execution["progress"] = execution["progress"] and not self.quiet
        return execution

    def predict_options(self, raw: str) -> dict:
        from blockwise.predict import DEFAULT_MAP

        predict = self.config.predict
        options = {
            "checkpoint": resolve_path(predict.checkpoint),
            "use_ema": predict.use_ema,
            "raw": raw,
            "out": f"{self.out}/affs",
            "disagreement": f"{self.out}/disagreement" if predict.disagreement else None,
            "run_dir": str(self.run_dir / "predict"),
            "map": predict.map or DEFAULT_MAP,
            "dtype": predict.dtype,
            "channels": predict.channels,
            "batch_size": predict.batch_size,
            "precision": predict.precision,
            "device": predict.device,
            "gpus": predict.gpus,
            "threads": predict.threads,
            "voxel_size": self.config.voxel_size,
            "roi_offset": self.config.roi_offset,
            "roi_shape": self.config.roi_shape,
            "execution": self.execution_options(),
        }
        for key in ("patch", "margin", "block_size", "chunk_shape"):
            if getattr(predict, key) is not None:
                options[key] = getattr(predict, key)
        return options

    def segment_options(self) -> dict:
        segment = self.config.segment
        options = {
            "affs": f"{self.out}/affs",
            "out": str(self.out),
            "run_dir": str(self.run_dir / "segment"),
            "graph": segment.graph or f"sqlite:///{self.run_dir / 'segment' / 'rag.db'}",
            "extract": {"thresholds": list(segment.thresholds)},
            "fragments": dict(segment.fragments),
            "agglomerate": dict(segment.agglomerate),
            "execution": self.execution_options(),
        }
        for key in ("block_size", "context", "chunk_shape"):
            if getattr(segment, key) is not None:
                options[key] = getattr(segment, key)
        if self.config.roi_offset is not None:
            options["roi_offset"], options["roi_shape"] = self.config.roi_offset, self.config.roi_shape
        return options

    def evaluate(self, segment_config) -> dict:
        """Scores of every segmentation in the evaluation ROI."""
        import numpy as np
        from funlib.geometry import Roi

        from affcons.evaluate import evaluate
        from affcons.io import open_volume
        from blockwise.extract import segmentation_name

        spec = self.config.evaluate
        path = resolve_path(spec.ground_truth)
        voxel_size = tuple(segment_config.voxel_size)
        gt = open_volume(path, voxel_size=voxel_size)
        roi = Roi(segment_config.roi_offset, segment_config.roi_shape)
        if spec.roi_offset is not None:
            roi = Roi(spec.roi_offset, spec.roi_shape)
        if not gt.roi.contains(roi):
            from affcons.errors import VolumeError

            raise VolumeError(f"evaluation ROI {roi} is not inside the ground truth's ROI {gt.roi} ({path})")
        labels = np.asarray(gt[roi])
        rows = []
        for threshold in segment_config.extract.thresholds:
            segmentation = np.asarray(open_volume(f"{self.out}/{segmentation_name(threshold)}")[roi])
            scores = evaluate(segmentation, labels)
            segments = int(len(np.unique(segmentation[segmentation != 0])))
            rows.append(
                {"threshold": float(threshold), "segments": segments, **{k: float(v) for k, v in scores.items()}}
            )
        best = min(rows, key=lambda row: row["voi"])
        return {
            "ground_truth": path,
            "roi_offset": list(roi.offset),
            "roi_shape": list(roi.shape),
            "per_threshold": rows,
            "best": best,
        }

    # ------------------------------------------------------------------------------------------------ run

    def run(self, dry_run: bool = False) -> int:
        from affcons.config import dump_config
        from blockwise.pipeline import Pipeline
        from blockwise.pipeline import resolve as resolve_segment
        from blockwise.predict import PredictJob, format_plan
        from blockwise.predict import resolve as resolve_predict

        started = time.time()
        self.summary = {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": self.config.model_dump(mode="json"),
            "run_dir": str(self.run_dir),
            "out": str(self.out),
            "stages": {},
            "status": "running",
        }
        if dry_run:
            raw = resolve_path(self.config.raw)
            predict_config, _ = resolve_predict(self.predict_options(raw))
            print(format_plan(predict_config), file=self.stream)
            print(
                f"then: segment {predict_config.out} at thresholds {self.config.segment.thresholds} into {self.out}"
                + (f", evaluate against {self.config.evaluate.ground_truth}" if self.config.evaluate else ""),
                file=self.stream,
            )
            return 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.config, self.run_dir / "job.yaml")
        status = 1
        try:
            status = self._run_stages(started, resolve_predict, PredictJob, resolve_segment, Pipeline)
        finally:
            self.summary["wall_s"] = round(time.time() - started, 3)
            if status != 0:
                self.summary["status"] = "failed"
            self.write_summary()
        return status

    def _run_stages(self, started, resolve_predict, PredictJob, resolve_segment, Pipeline) -> int:
        stages = self.summary["stages"]
        start = time.time()
        raw = self.import_raw()
        stages["import"] = {"wall_s": round(time.time() - start, 3), "raw": raw}

        start = time.time()
        predict_config, _ = resolve_predict(self.predict_options(raw))
        self.stage(
            2,
            "predict",
            f"{predict_config.checkpoint} -> {predict_config.out} (map {predict_config.map}, "
            f"{predict_config.device}, {predict_config.execution.workers} worker(s))",
        )
        predict_job = PredictJob(predict_config, quiet=self.quiet, stream=self.stream)
        status = predict_job.run()
        stages["predict"] = _stage_record(
            start, predict_job.summary, ("status", "device", "task", "timers", "voxels", "voxels_per_s", "failures")
        )
        if status != 0:
            return status

        start = time.time()
        segment_config = resolve_segment(self.segment_options())
        self.stage(
            3,
            "segment",
            f"{segment_config.affs} -> {self.out}/segmentation_<t> at thresholds "
            f"{list(segment_config.extract.thresholds)}",
        )
        pipeline = Pipeline(segment_config, quiet=self.quiet, stream=self.stream)
        status = pipeline.run()
        stages["segment"] = _stage_record(
            start, pipeline.summary, ("status", "stages", "tasks", "nodes", "edges", "segments", "failures")
        )
        if status != 0:
            return status

        if self.config.evaluate is not None:
            start = time.time()
            self.stage(4, "evaluate", f"against {self.config.evaluate.ground_truth}")
            metrics = self.evaluate(segment_config)
            stages["evaluate"] = {"wall_s": round(time.time() - start, 3)}
            self.summary["metrics"] = metrics
            from affcons.evaluate import format_table

            best = metrics["best"]
            print(format_table(metrics["per_threshold"]), file=self.stream)
            print(
                f"best: threshold {best['threshold']:.2f}: VOI split {best['voi_split']:.4f} merge "
                f"{best['voi_merge']:.4f} (sum {best['voi']:.4f}), ARAND {best['arand']:.4f}",
                file=self.stream,
            )
        else:
            self.stage(4, "evaluate", "skipped (no evaluate.ground_truth in the config)")
        self.summary["status"] = "complete"
        self.summary["wall_s"] = round(time.time() - started, 3)
        self.summary["outputs"] = self.describe_outputs(raw, segment_config, predict_config)
        script = self.run_dir / "neuroglancer.py"
        script.write_text(neuroglancer_script(self.summary["outputs"]))
        print(
            format_outputs(self.summary["outputs"], script, self.run_dir / "summary.json", self.summary["wall_s"]),
            file=self.stream,
            flush=True,
        )  # the result: printed even with --quiet
        return 0

    def describe_outputs(self, raw: str, segment_config, predict_config) -> list[dict]:
        """Path, kind, shape, dtype, voxel size and offset of every output (for neuroglancer and the summary)."""
        from affcons.io import open_volume
        from blockwise.extract import segmentation_name

        entries = [("raw", raw, "image")]
        entries.append(("affinities", predict_config.out, "image"))
        if predict_config.disagreement:
            entries.append(("disagreement", predict_config.disagreement, "image"))
        entries.append(("fragments", f"{self.out}/fragments", "segmentation"))
        for threshold in segment_config.extract.thresholds:
            entries.append((segmentation_name(threshold), f"{self.out}/{segmentation_name(threshold)}", "segmentation"))
        outputs = []
        for name, path, kind in entries:
            array = open_volume(path)
            outputs.append(
                {
                    "name": name,
                    "path": path,
                    "kind": kind,
                    "shape": list(array.shape),
                    "dtype": str(array.dtype),
                    "voxel_size_nm": list(array.voxel_size),
                    "offset_nm": list(array.roi.offset),
                    "axes": list(array.axis_names),
                }
            )
        return outputs

    def write_summary(self) -> None:
        path = self.run_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary, indent=2, default=str))
        tmp.replace(path)


def _stage_record(start: float, summary: dict, keys) -> dict:
    """Wall time since ``start`` plus the ``keys`` of a stage's own summary that it has."""
    return {"wall_s": round(time.time() - start, 3), **{key: summary[key] for key in keys if key in summary}}


def format_outputs(outputs: list[dict], script: Path, summary: Path, wall: float) -> str:
    lines = [f"done in {wall:.1f} s. Outputs (zarr v3; offsets and voxel sizes in nm, z y x):"]
    for entry in outputs:
        lines.append(
            f"  {entry['name']:<18} {entry['kind']:<12} {entry['path']}  shape {entry['shape']} "
            f"{entry['dtype']}  voxel {entry['voxel_size_nm']}  offset {entry['offset_nm']}"
        )
    lines.append(f"neuroglancer: pip install neuroglancer && python -i {script}   (summary: {summary})")
    return "\n".join(lines)


def neuroglancer_script(outputs: list[dict]) -> str:
    """A Python script that shows the outputs in a local neuroglancer viewer (``python -i neuroglancer.py``)."""
    return NEUROGLANCER_TEMPLATE.replace("__OUTPUTS__", repr(json.dumps(outputs, indent=1)))


NEUROGLANCER_TEMPLATE = '''"""Open the outputs of this affcons run in neuroglancer:
    pip install neuroglancer; python -i neuroglancer.py

Each output is a zarr v3 array in nm (z, y, x); the affinities have a leading channel axis (the first three channels
are shown as RGB). Volumes are loaded into memory: crop them (array[...]) for large runs.
"""
import json

import neuroglancer
import numpy as np
import zarr

OUTPUTS = json.loads(__OUTPUTS__)
RGB = "void main() { emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)), " \\
      "toNormalized(getDataValue(2)))); }"

neuroglancer.set_server_bind_address("127.0.0.1")
viewer = neuroglancer.Viewer()
with viewer.txn() as state:
    for entry in OUTPUTS:
        data = zarr.open_array(entry["path"], mode="r")
        spatial = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=entry["voxel_size_nm"])
        offset = [o // v for o, v in zip(entry["offset_nm"], entry["voxel_size_nm"])]
        if len(entry["shape"]) == 4:  # affinities: channels first
            space = neuroglancer.CoordinateSpace(names=["c^", "z", "y", "x"], units=["", "nm", "nm", "nm"],
                                                 scales=[1] + entry["voxel_size_nm"])
            source = neuroglancer.LocalVolume(np.asarray(data[:3]), dimensions=space, voxel_offset=[0] + offset)
            state.layers[entry["name"]] = neuroglancer.ImageLayer(source=source, shader=RGB, visible=False)
        elif entry["kind"] == "segmentation":
            source = neuroglancer.LocalVolume(np.asarray(data[:]).astype(np.uint64), dimensions=spatial,
                                              voxel_offset=offset)
            state.layers[entry["name"]] = neuroglancer.SegmentationLayer(source=source, visible=False)
        else:
            source = neuroglancer.LocalVolume(np.asarray(data[:]), dimensions=spatial, voxel_offset=offset)
            state.layers[entry["name"]] = neuroglancer.ImageLayer(source=source, visible=entry["name"] == "raw")
    state.layers[[e["name"] for e in OUTPUTS if e["kind"] == "segmentation"][-1]].visible = True
print(viewer)
'''
