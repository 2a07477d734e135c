"""Byte identity of the main job across versions: ``affcons run -c demo`` at a reference commit and in this tree.

    .venv/bin/python benchmarks/demo_identity.py [--reference a1f23f4] [--datasets fragments segmentation_0.60 ...]

The reference commit's source is exported with ``git archive`` into a temporary directory and run from there with
this tree's virtual environment (``PYTHONPATH`` puts the exported packages first; the reference's own CLI is used).
Both runs start from empty run directories. The script prints, per dataset of ``OUT.zarr``, how many chunk files
have identical SHA-256 digests, and exits 1 if any chunk differs or is missing. Chunk files only: metadata
(``zarr.json``) holds dates and fingerprints and is left out.
"""

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blockwise.testing import chunk_digests  # noqa: E402


def export(commit: str, target: Path) -> None:
    """The source tree of ``commit`` in ``target``."""
    archive = target.with_suffix(".tar")
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), commit], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()


def run_demo(source: Path, run_dir: Path) -> float:
    """``affcons run -c demo`` with the package in ``source``; returns the wall time (s)."""
    environment = dict(os.environ, PYTHONPATH=str(source))
    command = [sys.executable, "-m", "affcons.cli", "run", "-c", "demo", "--run-dir", str(run_dir), "--quiet"]
    start = time.time()
    completed = subprocess.run(command, cwd=source, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise SystemExit(f"{' '.join(command)} in {source} exited with {completed.returncode}")
    return time.time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="a1f23f4", help="commit to compare with (default a1f23f4)")
    parser.add_argument("--datasets", nargs="+", help="datasets of OUT.zarr to compare (default: all)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="affcons-identity-") as scratch:
        scratch = Path(scratch)
        reference = scratch / "reference"
        export(args.reference, reference)
        seconds = {"reference": run_demo(reference, scratch / "reference-run")}
        seconds["this tree"] = run_demo(REPO, scratch / "run")
        print("wall time: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))
        old = chunk_digests(scratch / "reference-run" / "out.zarr", args.datasets)
        new = chunk_digests(scratch / "run" / "out.zarr", args.datasets)
    datasets = sorted({path.split("/", 1)[0] for path in old} | {path.split("/", 1)[0] for path in new})
    differing = 0
    print(f"{'dataset':<20} {'chunks':>7} {'identical':>10}")
    for dataset in datasets:
        paths = sorted(p for p in set(old) | set(new) if p.split("/", 1)[0] == dataset)
        same = sum(1 for p in paths if old.get(p) is not None and old.get(p) == new.get(p))
        differing += len(paths) - same
        print(f"{dataset:<20} {len(paths):>7} {same:>10}")
    verdict = "byte-identical" if differing == 0 else f"{differing} chunk(s) differ or are missing"
    print(f"{args.reference} vs this tree: {verdict}")
    return 0 if differing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
