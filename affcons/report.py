"""A run report: one self-contained HTML page with the metrics, plots and slices of a run (no network needed).

    from affcons.report import read_history, segment_sizes, slices_from_volumes, write_report
    write_report("runs/demo/report.html", summary, history=None,
                 slices=slices_from_volumes("runs/demo/out.zarr/raw", "runs/demo/out.zarr/segmentation_0.60"),
                 sizes={"segmentation_0.60": segment_sizes("runs/demo/out.zarr/segmentation_0.60")})

Plots (matplotlib, embedded as PNG data URIs): VOI split / merge / sum and ARAND against the threshold, the
segment-size distribution, stage times, and the training loss and validation curves of a ``history.jsonl``. Each
figure is an ``<img>`` inside ``<figure id="...">``; a section whose data is missing is left out.
"""

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affcons.errors import VolumeError

#: Summary keys of ``per_threshold`` rows plotted against the threshold: (key, label, axis).
METRIC_LINES = (
    ("voi_split", "VOI split", "voi", "tab:blue"),
    ("voi_merge", "VOI merge", "voi", "tab:orange"),
    ("voi", "VOI sum", "voi", "tab:green"),
    ("arand", "ARAND", "arand", "tab:red"),
)


@dataclass(frozen=True)
class SliceView:
    """One section to show: raw intensities ``(y, x)`` and, optionally, segment ids ``(y, x)`` drawn over them."""

    title: str
    raw: np.ndarray
    segmentation: np.ndarray | None = None


def read_history(path: str | Path) -> list[dict]:
    """The rows of a training ``history.jsonl`` (one JSON object per line; blank lines skipped)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise VolumeError(f"{path}:{number}: not a JSON line ({error})") from None
    return rows


def segment_sizes(path: str | Path, merge_every: int = 64) -> np.ndarray:
    """Voxel count of every non-zero segment of a zarr id volume, read chunk by chunk (memory: one chunk + ids)."""
    import zarr

    array = zarr.open_array(str(path), mode="r")
    pending_ids: list[np.ndarray] = []
    pending_counts: list[np.ndarray] = []
    grid = [math.ceil(s / c) for s, c in zip(array.shape, array.chunks)]
    for chunk in np.ndindex(*grid):
        selection = tuple(slice(i * c, (i + 1) * c) for i, c in zip(chunk, array.chunks))
        chunk_ids, chunk_counts = np.unique(array[selection], return_counts=True)
        pending_ids.append(chunk_ids)
        pending_counts.append(chunk_counts)
        if len(pending_ids) >= merge_every:
            ids, counts = _merge_counts(pending_ids, pending_counts)
            pending_ids, pending_counts = [ids], [counts]
    ids, counts = _merge_counts(pending_ids, pending_counts)
    return counts[ids != 0]


def _merge_counts(ids: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(np.concatenate(ids), return_inverse=True)
    return unique, np.bincount(inverse, weights=np.concatenate(counts), minlength=len(unique)).astype(np.int64)


def slices_from_volumes(
    raw_path: str | Path,
    segmentation_path: str | Path | None = None,
    count: int = 3,
    max_extent: int = 1024,
) -> list[SliceView]:
    """``count`` evenly spaced z sections of ``raw`` (and the segmentation there), each at most ``max_extent``
    voxels across (a centred crop), read section by section."""
    from funlib.geometry import Coordinate, Roi

    from affcons.io import open_volume

    raw = open_volume(raw_path)
    segmentation = open_volume(segmentation_path) if segmentation_path is not None else None
    roi = raw.roi if segmentation is None else raw.roi.intersect(segmentation.roi)
    if roi.empty:
        raise VolumeError(f"{raw_path} and {segmentation_path} do not overlap")
    voxel = raw.voxel_size
    sections = roi.shape[0] // voxel[0]
    views = []
    for k in range(count):
        z = roi.offset[0] + ((2 * k + 1) * sections // (2 * count)) * voxel[0]
        extent = [min(roi.shape[i], max_extent * voxel[i]) for i in (1, 2)]
        begin = [roi.offset[i] + ((roi.shape[i] - extent[i - 1]) // 2) // voxel[i] * voxel[i] for i in (1, 2)]
        section = Roi(Coordinate(z, *begin), Coordinate(voxel[0], *extent))
        seg = None if segmentation is None else np.asarray(segmentation[section])[0]
        views.append(SliceView(f"z = {z} nm (section {z // voxel[0]})", np.asarray(raw[section])[0], seg))
    return views


def write_report(
    path: str | Path,
    summary: Mapping | None,
    history: Sequence[Mapping] | None = None,
    slices: Iterable[SliceView] = (),
    sizes: Mapping[str, np.ndarray] | None = None,
    title: str = "affcons report",
) -> Path:
    """Write the HTML report to ``path`` and return it.

    Args:
        summary: a run's ``summary.json`` (``affcons run``): status, wall time, ``stages`` with ``wall_s``,
            ``metrics.per_threshold`` and ``metrics.best``, ``outputs``. ``None`` for a training-only report.
        history: rows of a training ``history.jsonl`` (:func:`read_history`).
        slices: sections with the segmentation drawn over raw.
        sizes: voxel counts per segment (:func:`segment_sizes`) by segmentation name.
        title: the page title.
    """
    import matplotlib

    matplotlib.use("Agg")
    sections = [f"<h1>{html.escape(title)}</h1>"]
    summary = summary or {}
    if summary:
        sections.append(_summary_table(summary))
    metrics = summary.get("metrics") or {}
    if metrics.get("per_threshold"):
        sections.append(_figure("metrics", "Errors against the agglomeration threshold", _metrics_plot(metrics)))
    if sizes:
        sections.append(_figure("sizes", "Segment sizes", _sizes_plot(sizes)))
    if summary.get("stages"):
        sections.append(_figure("stages", "Stage times", _stages_plot(summary["stages"])))
    if history:
        sections.append(_figure("training", "Training", _training_plot(history)))
    slices = list(slices)
    if slices:
        images = "".join(
            f'<figure class="slice"><img alt="{html.escape(view.title)}" src="{_jpeg_uri(_overlay(view))}">'
            f"<figcaption>{html.escape(view.title)}</figcaption></figure>"
            for view in slices
        )
        sections.append(f'<section id="slices"><h2>Sections: segmentation over raw</h2>{images}</section>')
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:70em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}"
    "figure{display:inline-block;margin:0.5em}figure img{max-width:100%}figure.slice img{width:20em}"
    "figcaption{font-size:0.9em;color:#555}"
)


def _summary_table(summary: Mapping) -> str:
    rows = []
    for key, label in (("status", "status"), ("run_dir", "run directory"), ("wall_s", "wall time (s)")):
        if key in summary:
            rows.append((label, summary[key]))
    metrics = summary.get("metrics") or {}
    if metrics.get("ground_truth"):
        region = (
            f" in ROI offset {metrics['roi_offset']} nm, shape {metrics['roi_shape']} nm"
            if metrics.get("roi_shape")
            else ""
        )
        rows.append(("evaluated against", f"{metrics['ground_truth']}{region}"))
    best = metrics.get("best")
    if best:
        rows.append(
            (
                "best threshold",
                f"{best['threshold']:.2f}: VOI split {best['voi_split']:.4f} + merge {best['voi_merge']:.4f} "
                f"= {best['voi']:.4f} nats, ARAND {best['arand']:.4f}",
            )
        )
    segments = ((summary.get("stages") or {}).get("segment") or {}).get("segments")
    if segments:
        rows.append(("segments", ", ".join(f"{t}: {n}" for t, n in segments.items())))
    for output in summary.get("outputs") or []:
        rows.append(
            (
                output["name"],
                f"{output['path']} ({output['kind']}, {output['dtype']}, shape {output['shape']}, "
                f"voxel {output['voxel_size_nm']} nm, offset {output['offset_nm']} nm)",
            )
        )
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<section id="summary"><h2>Summary</h2><table>{cells}</table></section>'


def _figure(section_id: str, heading: str, figure) -> str:
    uri = _figure_uri(figure)
    return (
        f'<section id="{section_id}"><h2>{html.escape(heading)}</h2>'
        f'<figure id="{section_id}-plot"><img alt="{html.escape(heading)}" src="{uri}"></figure></section>'
    )


def _figure_uri(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _metrics_plot(metrics: Mapping):
    import matplotlib.pyplot as plt

    rows = sorted(metrics["per_threshold"], key=lambda row: row["threshold"])
    thresholds = [row["threshold"] for row in rows]
    figure, voi_axis = plt.subplots(figsize=(6.5, 3.6))
    arand_axis = voi_axis.twinx()
    for key, label, axis, colour in METRIC_LINES:
        target = voi_axis if axis == "voi" else arand_axis
        style = "--" if axis == "arand" else "-"
        target.plot(thresholds, [row[key] for row in rows], style, marker="o", color=colour, label=label)
    best = metrics.get("best")
    if best:
        voi_axis.axvline(best["threshold"], color="grey", linestyle=":", label=f"best {best['threshold']:.2f}")
    voi_axis.set_xlabel("threshold")
    voi_axis.set_ylabel("VOI (nats)")
    arand_axis.set_ylabel("ARAND")
    arand_axis.set_ylim(0, 1)
    handles = voi_axis.get_legend_handles_labels()[0] + arand_axis.get_legend_handles_labels()[0]
    voi_axis.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.12, 1.0))
    return figure


def _sizes_plot(sizes: Mapping[str, np.ndarray]):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    largest = max((int(s.max()) for s in sizes.values() if len(s)), default=1)
    bins = np.logspace(0, math.log10(max(largest, 2)) + 0.01, 40)
    for name, counts in sizes.items():
        axis.hist(counts, bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({len(counts)} segments)")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("segment size (voxels)")
    axis.set_ylabel("segments")
    axis.legend(fontsize=8)
    return figure


def _stages_plot(stages: Mapping):
    import matplotlib.pyplot as plt

    names, seconds = [], []
    for stage, record in stages.items():
        if isinstance(record, Mapping) and "wall_s" in record:
            names.append(stage)
            seconds.append(record["wall_s"])
            for step, step_record in (record.get("stages") or {}).items():
                if isinstance(step_record, Mapping) and "wall_s" in step_record:
                    names.append(f"  {stage}: {step}")
                    seconds.append(step_record["wall_s"])
    figure, axis = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.0))
    axis.barh(range(len(names)), seconds, color=["#3b6ea5" if not n.startswith(" ") else "#8fb3d9" for n in names])
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set_xlabel("wall time (s)")
    for row, value in enumerate(seconds):
        axis.text(value, row, f" {value:.1f}", va="center", fontsize=8)
    return figure


def _training_plot(history: Sequence[Mapping]):
    import matplotlib.pyplot as plt

    losses: dict[str, list[tuple[int, float]]] = {}
    validation: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        iteration = row.get("iteration")
        for key, value in row.items():
            if key.startswith("loss/") and isinstance(value, int | float) and math.isfinite(value):
                losses.setdefault(key, []).append((iteration, value))
        for key in ("voi_split", "voi_merge", "arand"):
            value = (row.get("validation") or {}).get(key)
            if value is not None:
                validation.setdefault(key, []).append((iteration, value))
    figure, (loss_axis, validation_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, points in sorted(losses.items()):
        loss_axis.plot(*zip(*sorted(points)), label=key.removeprefix("loss/"))
    if all(value > 0 for points in losses.values() for _, value in points):
        loss_axis.set_yscale("log")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("loss")
    loss_axis.set_title("losses", fontsize=10)
    if losses:
        loss_axis.legend(fontsize=7)
    for key, points in sorted(validation.items()):
        by_iteration = dict(sorted(points))  # a repeated validation row counts once
        validation_axis.plot(list(by_iteration), list(by_iteration.values()), marker="o", label=key)
    validation_axis.set_xlabel("iteration")
    validation_axis.set_title("validation (VOI in nats)", fontsize=10)
    if validation:
        validation_axis.legend(fontsize=7)
    else:
        validation_axis.text(
            0.5, 0.5, "no validation in this history", ha="center", transform=validation_axis.transAxes
        )
    return figure


def _overlay(view: SliceView, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 ``(y, x, 3)``: raw in grey (stretched to its 1-99 % range), each segment id in its own colour."""
    raw = view.raw.astype(np.float32)
    low, high = np.percentile(raw, [1, 99]) if raw.size else (0.0, 1.0)
    grey = np.clip((raw - low) / max(high - low, 1e-6), 0, 1)[..., None] * 255.0
    if view.segmentation is None:
        return np.repeat(grey, 3, axis=2).astype(np.uint8)
    ids = view.segmentation.astype(np.uint64)
    hashed = ids * np.uint64(0x9E3779B97F4A7C15)
    colours = np.stack([(hashed >> np.uint64(shift)) & np.uint64(255) for shift in (56, 40, 24)], axis=-1)
    colours = 60.0 + colours.astype(np.float32) * (195.0 / 255.0)
    mixed = np.where((ids > 0)[..., None], (1 - alpha) * grey + alpha * colours, grey)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def _jpeg_uri(rgb: np.ndarray) -> str:
    """JPEG (quality 90): EM noise makes a PNG of a section 5x larger."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
