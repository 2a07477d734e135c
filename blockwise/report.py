"""The report of a run directory (:func:`write_run_report`): what :mod:`affcons.report` draws, gathered from the
run's summary, outputs and training history."""

from pathlib import Path

from blockwise.layout import FRAGMENTS, RAW, RunContents, segmentation_name


def write_run_report(contents: RunContents, path: Path) -> Path:
    """Write the HTML report of ``contents`` (:func:`blockwise.layout.run_contents`) to ``path``: metrics and stage
    times from the summary, segment sizes of the best segmentation and of the fragments (read chunk by chunk),
    three sections of raw with the best segmentation over it, and the training curves when there is a history."""
    from affcons.report import read_history, segment_sizes, slices_from_volumes, write_report

    history = []
    for history_path in contents.histories:
        history += read_history(history_path)
    sizes, slices = {}, []
    if contents.container is not None:
        volumes = {FRAGMENTS: contents.container / FRAGMENTS}
        if contents.best_threshold is not None:
            name = segmentation_name(contents.best_threshold)
            volumes = {name: contents.container / name, **volumes}
        sizes = {name: segment_sizes(volume) for name, volume in volumes.items() if volume.is_dir()}
        raw = contents.raw or contents.container / RAW
        if raw.exists():
            shown = next((volume for volume in volumes.values() if volume.is_dir()), None)
            slices = slices_from_volumes(raw, shown)
    title = f"affcons report: {path.parent}"
    return write_report(path, contents.summary, history=history or None, slices=slices, sizes=sizes, title=title)
