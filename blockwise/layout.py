"""The map of a run: every file of a run directory and every dataset of an output container, by name, and the one
way to read and update a dataset's attributes.

An output container (``OUT.zarr``) holds ``raw`` (imported by ``affcons run``), ``affs`` and ``disagreement``
(``affcons predict``), ``fragments`` and ``segmentation_<t>`` (``affcons segment``). A run directory holds the
resolved config, daisy's done markers, worker logs, block timers, the summary and the step state listed on
:class:`RunDir`. Files that another process may read are replaced atomically (:mod:`affcons.files`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from affcons.errors import VolumeError
from affcons.files import write_json

#: Mode of the run directory's config and summary files (they name the graph store).
PRIVATE = 0o600

#: Datasets of an output container.
RAW = "raw"
AFFS = "affs"
DISAGREEMENT = "disagreement"
FRAGMENTS = "fragments"


def threshold_name(threshold: float) -> str:
    """``0.5 -> "0.50"``: thresholds have at most two decimals and are named by them."""
    return f"{threshold:.2f}"


def segmentation_name(threshold: float) -> str:
    """``0.5 -> "segmentation_0.50"``."""
    return f"segmentation_{threshold_name(threshold)}"


class RunDir:
    """The files of one run directory, by name (nothing is created here)."""

    #: Resolved configs: ``affcons segment``, ``affcons predict``, ``affcons run``, ``affcons pyramid``.
    SEGMENT_CONFIG = "config.yaml"
    PREDICT_CONFIG = "predict.yaml"
    JOB_CONFIG = "job.yaml"
    PYRAMID_CONFIG = "pyramid.yaml"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def lock(self) -> Path:
        """``driver.lock``: held (``flock``) by the driver working in this directory; names its host and pid."""
        return self.path / "driver.lock"

    @property
    def summary(self) -> Path:
        """``summary.json``: stages, block counts, timers, failures of the last run."""
        return self.path / "summary.json"

    @property
    def logs(self) -> Path:
        """``logs/<task>/worker_<n>.{out,err}``."""
        return self.path / "logs"

    def tracking(self, task_id: str) -> Path:
        """daisy's done markers of one task."""
        return self.path / "tracking" / task_id

    def errors(self, task_id: str) -> Path:
        """Error records of the failed block attempts of one task (``<host>-<pid>.jsonl``)."""
        return self.path / "errors" / task_id

    def timers(self, task_id: str) -> Path:
        """Block timer records of one task (``<host>-<pid>.jsonl``, :mod:`blockwise.timers`)."""
        return self.path / "timers" / task_id

    # ------------------------------------------------------------------------------------- affcons segment

    @property
    def default_graph(self) -> str:
        """The default graph store: SQLite in the run directory."""
        return f"sqlite:///{self.path / 'rag.db'}"

    @property
    def faces(self) -> Path:
        """``faces.zarr``: the blocks' face sections (fragments, face-link bits, affinities; see
        :mod:`blockwise.faces`), run-internal state."""
        return self.path / "faces.zarr"

    @property
    def merge_tree(self) -> Path:
        return self.path / "merge_tree.npz"

    @property
    def agglomerate_info(self) -> Path:
        """``agglomerate.json``: counts, timings and the fingerprint of the saved merge tree."""
        return self.path / "agglomerate.json"

    @property
    def hierarchy(self) -> Path:
        """``hierarchy/``: the block states of the hierarchical agglomeration, one directory per level."""
        return self.path / "hierarchy"

    def hierarchy_state(self, level: int, block: int | None) -> Path:
        """``hierarchy/<level>/<block>.npz`` (grid index of the level's block grid), or ``hierarchy/<level>/root.npz``
        for ``block=None``: the level one process finishes (the root or the stop level)."""
        return self.hierarchy / str(level) / f"{'root' if block is None else block}.npz"

    @property
    def lut_ids(self) -> Path:
        """``luts/ids.npy``: every fragment id, sorted."""
        return self.path / "luts" / "ids.npy"

    def lut_segments(self, threshold: float) -> Path:
        """``luts/segments_<t>.npy``: the segment of each fragment of :attr:`lut_ids` at ``threshold``."""
        return self.path / "luts" / f"segments_{threshold_name(threshold)}.npy"

    # ------------------------------------------------------------------------------------- affcons predict

    @property
    def gpu_locks(self) -> Path:
        """``gpu-locks/gpu<N>.lock``: one exclusive lock per GPU held by a prediction worker."""
        return self.path / "gpu-locks"

    # ----------------------------------------------------------------------------------------- affcons run

    @property
    def predict(self) -> "RunDir":
        """The run directory of the job's prediction stage."""
        return RunDir(self.path / "predict")

    @property
    def segment(self) -> "RunDir":
        """The run directory of the job's segmentation stage."""
        return RunDir(self.path / "segment")

    @property
    def report(self) -> Path:
        """``report.html``: the run's metrics, segment sizes, stage times and sections (``affcons report``)."""
        return self.path / "report.html"

    def write_summary(self, summary: dict) -> None:
        """``summary.json``, atomically, mode 600 (it names the graph store)."""
        write_json(self.summary, summary, mode=PRIVATE)


def segment_run_dir(out: str | Path) -> Path:
    """Default run directory of ``affcons segment``: ``/data/out.zarr`` -> ``/data/out.affcons-run``."""
    out = Path(out).absolute()
    return out.parent / f"{out.stem}.affcons-run"


def predict_run_dir(out: str) -> Path:
    """Default run directory of ``affcons predict``: ``/data/out.zarr/affs`` -> ``/data/out.affs.predict-run``."""
    return _beside_container(out, "predict-run", default_name=AFFS)


def pyramid_run_dir(out: str) -> Path:
    """Default run directory of ``affcons pyramid``: ``/data/out.zarr/seg_multiscale`` ->
    ``/data/out.seg_multiscale.pyramid-run``."""
    return _beside_container(out, "pyramid-run")


def _beside_container(path: str, suffix: str, default_name: str = "") -> Path:
    """``CONTAINER_PARENT/<container stem>.<dataset, '/' as '_'>.<suffix>`` for ``c.zarr/dataset``."""
    from affcons.volume_paths import split_dataset_path

    volume = split_dataset_path(path)
    name = volume.dataset.replace("/", "_") or default_name
    return volume.container.absolute().parent / f"{volume.container.stem}.{name}.{suffix}"


def _array_directory(path: str | Path) -> Path:
    """The directory of the zarr array ``out.zarr/name`` (a path string or a directory)."""
    from affcons.volume_paths import split_dataset_path

    volume = split_dataset_path(path)
    return volume.container / volume.dataset


def read_attrs(path: str | Path) -> dict | None:
    """Attributes of the zarr v3 array ``out.zarr/name``; ``{}`` for something else or unreadable metadata there,
    None if nothing is there. Reads the metadata file only (cheap; no zarr import)."""
    directory = _array_directory(path)
    metadata = directory / "zarr.json"
    if metadata.is_file():
        return json.loads(metadata.read_text()).get("attributes", {})
    return {} if directory.exists() else None


def update_attrs(path: str | Path, attrs: dict) -> None:
    """Merge ``attrs`` into the attributes of the zarr v3 array ``out.zarr/name``; the metadata file is replaced
    atomically, so a crash leaves the old or the new attributes, never a truncated file."""
    metadata = _array_directory(path) / "zarr.json"
    if not metadata.is_file():
        raise VolumeError(f"{path}: no zarr v3 array there (no {metadata.name})")
    document = json.loads(metadata.read_text())
    document.setdefault("attributes", {}).update(attrs)
    write_json(metadata, document)


def input_is_complete(path: str) -> bool:
    """True if the input carries ``complete: true`` (written by affcons, every block done): then a missing chunk is
    an error, not fill value. An input marked ``complete: false`` is refused: the run that writes it has not
    finished."""
    attrs = read_attrs(path) if ".zarr" in str(path) else None
    if attrs and attrs.get("complete") is False:
        raise VolumeError(
            f"{path} is marked incomplete (complete: false): the run writing it has not finished; re-run that "
            "command until it exits 0, then use its output"
        )
    return bool(attrs and attrs.get("complete") is True)


@dataclass(frozen=True)
class RunContents:
    """What a run directory or an output container holds, for viewing and reporting."""

    #: The run directory or container asked about.
    location: Path
    #: The output container (``OUT.zarr``), or None for a training run.
    container: Path | None
    #: The raw volume when it lives outside the container (zarr raw used in place by ``affcons run``).
    raw: Path | None
    #: The run's ``summary.json``, if any.
    summary: dict | None
    #: The best threshold of the run's evaluation, if any.
    best_threshold: float | None
    #: Training ``history.jsonl`` files (CRAC training, or pre-training stages), if any.
    histories: list[Path]


def run_contents(path: str | Path) -> RunContents:
    """Read what ``path`` holds: an ``affcons run`` / ``affcons segment`` / ``affcons predict`` run directory, a
    training run directory (``crac/``, ``stage1/``, ``stage2/`` with ``history.jsonl``), or a zarr container."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise VolumeError(f"{path}: no such run directory or zarr container")
    histories = [p for p in (path / "crac" / "history.jsonl", path / "stage1" / "history.jsonl") if p.is_file()]
    if path.suffix == ".zarr":
        return RunContents(path, path, None, None, None, histories)
    summary_path = RunDir(path).summary
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is None and not histories:
        raise VolumeError(
            f"{path} holds no summary.json and no training history: give a run directory of affcons run, segment, "
            "predict or train, or a zarr container"
        )
    out = (summary or {}).get("out") or (summary or {}).get("config", {}).get("out")
    container = None
    if out:
        container = Path(out) if str(out).endswith(".zarr") else Path(out).parent  # predict: out.zarr/affs
    raw = None
    raw_path = ((summary or {}).get("stages", {}).get("import") or {}).get("raw")
    if raw_path and container is not None and Path(raw_path).parent != container:
        raw = Path(raw_path)
    best = ((summary or {}).get("metrics") or {}).get("best") or {}
    return RunContents(path, container, raw, summary, best.get("threshold"), histories)
