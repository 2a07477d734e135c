"""``affcons run -c CONFIG``: the main job. Raw volume -> affinities -> segmentations at the configured thresholds ->
(with ground truth) evaluation, in one run directory with one ``summary.json``.

Stages (each resumes: re-running the same command after an interruption continues where it stopped):

1. ``import``: a raw volume that is not zarr (HDF5) is copied into ``OUT.zarr/raw`` (:mod:`affcons.io`); zarr raw is
   used in place.
2. ``predict``: :class:`blockwise.predict.PredictDriver` writes ``OUT.zarr/affs`` (and ``OUT.zarr/disagreement``);
   its run directory is ``RUN_DIR/predict``.
3. ``segment``: :class:`blockwise.segment.SegmentDriver`, called in this process, writes ``OUT.zarr/fragments`` and
   ``OUT.zarr/segmentation_<t>``; its run directory is ``RUN_DIR/segment`` and the graph store defaults to
   ``sqlite:///RUN_DIR/segment/rag.db``.
4. ``evaluate`` (if ``evaluate.ground_truth`` is set): VOI split/merge (nats) and ARAND of every segmentation in the
   evaluation ROI, from the fragments' contingency table with the ground truth (read once) and each threshold's
   lookup table (:func:`affcons.evaluate.scores_from_lut`).

At the end the outputs are described (paths, shapes, voxel sizes and offsets, printed and in the summary),
``RUN_DIR/report.html`` is written (:mod:`blockwise.report`), and ``affcons view RUN_DIR`` shows them in
neuroglancer.

The job's config (:class:`~blockwise.config.JobConfig`) composes the ``predict`` and ``segment`` settings of the two
commands; its ``job.yaml`` in the run directory carries its fingerprint, so a changed config for an existing run
directory is refused before anything runs. Exit codes: 0 done, 1 blocks failed in a stage (listed), 2 bad input or
an existing output of another config.
"""

import sys
import time
from pathlib import Path

from affcons.config import validate
from affcons.errors import OutputExistsError, VolumeError
from blockwise.config import JobConfig, PredictOptions, SegmentOptions
from blockwise.layout import AFFS, DISAGREEMENT, FRAGMENTS, RAW, RunDir, read_attrs, segmentation_name, update_attrs
from blockwise.runner import Driver

STAGES = ("import", "predict", "segment", "evaluate")


def resolve_path(path: str) -> str:
    """Repository-relative paths made absolute (``file.h5:name`` keeps its dataset)."""
    from affcons.train.config import resolve_path as resolve

    return str(resolve(path))


class Job(Driver):
    """One ``affcons run``: the four stages, the summary and the neuroglancer description."""

    command = "affcons run"
    config_file = RunDir.JOB_CONFIG
    incomplete = "the job stopped at this stage"
    elsewhere = "Use another --run-dir, or remove it"

    def __init__(self, config: JobConfig, run_dir: Path, quiet: bool = False, stream=None):
        from blockwise.segment import take_password

        if config.segment.graph:  # the password goes to the workers' environment, never into job.yaml
            graph, credentials = take_password(config.segment.graph, config.segment.graph_credentials)
            segment = config.segment.model_copy(update={"graph": graph, "graph_credentials": credentials})
            config = config.model_copy(update={"segment": segment})
        super().__init__(config, run_dir, quiet, stream)
        self.out = Path(config.out).absolute() if config.out else self.run_dir / "out.zarr"

    def stage(self, index: int, name: str, detail: str) -> None:
        self.say(f"[{index}/{len(STAGES)}] {name}: {detail}")

    # ---------------------------------------------------------------------------------------------- stages

    def import_raw(self) -> str:
        """The raw as zarr: HDF5 is copied into ``OUT.zarr/raw`` once (a finished copy is reused)."""
        from affcons.io import copy_volume, create_volume, open_volume, split_dataset_path

        raw = resolve_path(self.config.raw)
        if not split_dataset_path(raw).is_hdf5:
            self.stage(1, "import", f"{raw} is zarr, used in place")
            return raw
        target = f"{self.out}/{RAW}"
        source = open_volume(raw, voxel_size=self.config.voxel_size)
        marker = {
            "source": raw,
            "shape": list(source.shape),
            "voxel_size": list(source.voxel_size),
            "offset": list(source.roi.offset),
        }
        attrs = read_attrs(target)
        if attrs is not None:
            if attrs.get("affcons_import") == marker and attrs.get("complete") is True:
                self.stage(1, "import", f"{target} exists (copied from {raw}), reused")
                return target
            if attrs.get("affcons_import") != marker:
                raise OutputExistsError(
                    f"{target} exists and was not imported from {raw} by this job; refusing to overwrite it: use "
                    "another run directory or out"
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
        update_attrs(target, {"complete": True})
        return target

    def execution(self) -> dict:
        """The job's ``execution`` section for the predict and segment stages (no progress bars with --quiet)."""
        execution = self.config.execution.model_dump(mode="json")
        execution["progress"] = execution["progress"] and not self.quiet
        return execution

    def predict_options(self, raw: str) -> PredictOptions:
        """The prediction stage's options: the job's ``predict`` settings plus its paths, region and execution."""
        predict = self.config.predict
        settings = predict.model_dump(exclude={"checkpoint", "disagreement"})
        options = {
            **settings,
            "checkpoint": resolve_path(predict.checkpoint),
            "raw": raw,
            "out": f"{self.out}/{AFFS}",
            "disagreement": f"{self.out}/{DISAGREEMENT}" if predict.disagreement else None,
            "run_dir": str(self.run_dir.predict),
            "voxel_size": self.config.voxel_size,
            "roi_offset": self.config.roi_offset,
            "roi_shape": self.config.roi_shape,
            "execution": self.execution(),
        }
        return validate(PredictOptions, options, f"{self.run_dir / self.config_file}: predict")

    def segment_options(self) -> SegmentOptions:
        """The segmentation stage's options: the job's ``segment`` settings plus its paths, region and execution."""
        segment = self.config.segment
        options = {
            **segment.model_dump(),
            "affs": f"{self.out}/{AFFS}",
            "out": str(self.out),
            "run_dir": str(self.run_dir.segment),
            "graph": segment.graph or self.run_dir.segment.default_graph,
            "roi_offset": self.config.roi_offset,
            "roi_shape": self.config.roi_shape,
            "execution": self.execution(),
        }
        return validate(SegmentOptions, options, f"{self.run_dir / self.config_file}: segment")

    def evaluate(self, segment_config) -> dict:
        """Scores of every segmentation in the evaluation ROI, from one read of the fragments and the ground truth:
        the (fragment, ground truth) contingency table, cut by each threshold's lookup table (the same numbers as
        scoring each ``segmentation_<t>``, which are these lookups applied to the fragments)."""
        import numpy as np
        from funlib.geometry import Roi

        from affcons.evaluate import fragment_contingency, scores_from_lut, segments_from_lut
        from affcons.io import open_volume

        spec = self.config.evaluate
        path = resolve_path(spec.ground_truth)
        voxel_size = tuple(segment_config.voxel_size)
        gt = open_volume(path, voxel_size=voxel_size)
        roi = Roi(segment_config.roi_offset, segment_config.roi_shape)
        if spec.roi_offset is not None:
            roi = Roi(spec.roi_offset, spec.roi_shape)
        if not gt.roi.contains(roi):
            raise VolumeError(f"evaluation ROI {roi} is not inside the ground truth's ROI {gt.roi} ({path})")
        table = fragment_contingency(open_volume(f"{self.out}/{FRAGMENTS}"), gt, roi)
        run_dir = self.run_dir.segment
        ids = np.load(run_dir.lut_ids)
        rows = []
        for threshold in segment_config.extract.thresholds:
            segment_of = np.load(run_dir.lut_segments(threshold))
            scores = scores_from_lut(table, ids, segment_of)
            segments = segments_from_lut(table, ids, segment_of)
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
        from blockwise.predict import PredictDriver
        from blockwise.predict import resolve as resolve_predict

        self.check_run_dir()  # refusals write nothing
        self.check_launcher()
        if not dry_run:
            self.lock()
            self.check_run_dir()  # again: no other driver can write here now
        if not dry_run and self.finished_before():
            summary = self.summary
            print(
                f"{self.command}: already complete (the run started {summary.get('started')}, took "
                f"{summary['wall_s']:.0f} s); nothing to do. Outputs:",
                file=self.stream,
            )
            report = self.run_dir.report if self.run_dir.report.is_file() else None
            listing = format_outputs(summary["outputs"], self.run_dir, report, summary["wall_s"]).split("\n", 1)[1]
            print(listing, file=self.stream)  # without the first run's "done in" line
            return 0
        if dry_run:
            predict_config, _ = resolve_predict(self.predict_options(resolve_path(self.config.raw)))
            print(PredictDriver(predict_config).plan(), file=self.stream)
            also = f", evaluate against {self.config.evaluate.ground_truth}" if self.config.evaluate else ""
            thresholds = self.config.segment.extract.thresholds
            print(
                f"then: segment {predict_config.out} at thresholds {thresholds} into {self.out}{also}", file=self.stream
            )
            return 0
        started = self.start_summary(run_dir=str(self.run_dir), out=str(self.out), stages={}, status="running")
        self.write_config()
        return self.run_recorded(self._run_stages, started, started)

    def check_run_dir(self) -> None:
        """As :meth:`Driver.check_run_dir`, and refuse a run directory copied or moved from elsewhere: its summary
        and stage configs name the outputs and stores of the first place, which a run here would neither use nor
        update (writes nothing)."""
        super().check_run_dir()
        here = self.run_dir.path.resolve()
        for recorded in self.recorded_places():
            if Path(recorded).resolve() != here:
                raise OutputExistsError(
                    f"run directory {self.run_dir} holds a run made in {recorded} (copied or moved: its summary and "
                    f"stage configs name the outputs there); a run directory cannot be relocated. Re-run with "
                    f"--run-dir {recorded}, or start afresh with another --run-dir"
                )

    def recorded_places(self) -> list[str]:
        """The run directories this one's records name: the summary's, and the parents of the stages' own."""
        import json

        import yaml

        places = []
        try:
            places.append(json.loads(self.run_dir.summary.read_text())["run_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for stage in (self.run_dir.predict / RunDir.PREDICT_CONFIG, self.run_dir.segment / RunDir.SEGMENT_CONFIG):
            try:
                places.append(str(Path(yaml.safe_load(stage.read_text())["run_dir"]).parent))
            except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
                pass
        return places

    def finished_before(self) -> bool:
        """True (and ``self.summary`` loaded) when this config's run finished here before and all its outputs are
        still there, marked complete: a re-run then starts no worker and leaves the first run's summary as it is."""
        import json

        try:
            summary = json.loads(self.run_dir.summary.read_text())
        except (OSError, ValueError):
            return False
        if summary.get("status") != "complete" or summary.get("fingerprint") != self.fingerprint:
            return False
        for entry in summary.get("outputs", []):
            attrs = read_attrs(entry["path"])
            if attrs is None or (entry["name"] != RAW and attrs.get("complete") is not True):
                return False
        self.summary = summary
        return bool(summary.get("outputs"))

    def _run_stages(self, started: float) -> int:
        from affcons.evaluate import format_table
        from blockwise.predict import PredictDriver
        from blockwise.predict import resolve as resolve_predict
        from blockwise.segment import SegmentDriver
        from blockwise.segment import resolve as resolve_segment

        stages = self.summary["stages"]
        start = time.time()
        raw = self.import_raw()
        stages["import"] = {"wall_s": round(time.time() - start, 3), "raw": raw}

        predict_config, _ = resolve_predict(self.predict_options(raw))
        detail = (
            f"{predict_config.checkpoint} -> {predict_config.out} (map {predict_config.map}, "
            f"{predict_config.device}, {predict_config.execution.workers} worker(s))"
        )
        keys = ("status", "device", "task", "timers", "voxels", "voxels_per_s", "failures")
        status = self._run_stage(2, "predict", detail, PredictDriver(predict_config, self.quiet, self.stream), keys)
        if status != 0:
            return status

        segment_config = resolve_segment(self.segment_options())
        thresholds = list(segment_config.extract.thresholds)
        detail = f"{segment_config.affs} -> {self.out}/segmentation_<t> at thresholds {thresholds}"
        keys = ("status", "stages", "tasks", "nodes", "edges", "segments", "failures")
        status = self._run_stage(3, "segment", detail, SegmentDriver(segment_config, self.quiet, self.stream), keys)
        if status != 0:
            return status

        if self.config.evaluate is not None:
            start = time.time()
            self.stage(4, "evaluate", f"against {self.config.evaluate.ground_truth}")
            metrics = self.evaluate(segment_config)
            stages["evaluate"] = {"wall_s": round(time.time() - start, 3)}
            self.summary["metrics"] = metrics
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
        self.write_summary()
        report = self.write_report()
        print(
            format_outputs(self.summary["outputs"], self.run_dir, report, self.summary["wall_s"]),
            file=self.stream,
            flush=True,
        )  # the result: printed even with --quiet
        return 0

    def write_report(self) -> Path | None:
        """``RUN_DIR/report.html`` (:mod:`blockwise.report`); a failure to draw it is reported, not raised."""
        from blockwise.layout import run_contents
        from blockwise.report import write_run_report

        try:
            return write_run_report(run_contents(self.run_dir.path), self.run_dir.report)
        except Exception as error:  # the run itself is complete; its report is an extra
            print(f"{self.command}: warning: report not written: {error}", file=sys.stderr, flush=True)
            return None

    def _run_stage(self, index: int, name: str, detail: str, driver: Driver, keys) -> int:
        """Run a stage's driver; record its wall time and the ``keys`` of its own summary; return its exit code."""
        start = time.time()
        self.stage(index, name, detail)
        status = driver.run()
        self.summary["stages"][name] = {
            "wall_s": round(time.time() - start, 3),
            **{key: driver.summary[key] for key in keys if key in driver.summary},
        }
        return status

    def describe_outputs(self, raw: str, segment_config, predict_config) -> list[dict]:
        """Path, kind, shape, dtype, voxel size and offset of every output (for neuroglancer and the summary)."""
        from affcons.io import open_volume

        entries = [("raw", raw, "image"), ("affinities", predict_config.out, "image")]
        if predict_config.disagreement:
            entries.append(("disagreement", predict_config.disagreement, "image"))
        entries.append((FRAGMENTS, f"{self.out}/{FRAGMENTS}", "segmentation"))
        for threshold in segment_config.extract.thresholds:
            name = segmentation_name(threshold)
            entries.append((name, f"{self.out}/{name}", "segmentation"))
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


def format_outputs(outputs: list[dict], run_dir: RunDir, report: Path | None, wall: float) -> str:
    lines = [f"done in {wall:.1f} s. Outputs (zarr v3; offsets and voxel sizes in nm, z y x):"]
    for entry in outputs:
        lines.append(
            f"  {entry['name']:<18} {entry['kind']:<12} {entry['path']}  shape {entry['shape']} "
            f"{entry['dtype']}  voxel {entry['voxel_size_nm']}  offset {entry['offset_nm']}"
        )
    lines.append(f"view them: affcons view {run_dir}   (summary: {run_dir.summary})")
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)
