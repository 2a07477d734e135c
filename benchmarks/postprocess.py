"""Post-processing benchmark: monolithic waterz vs ``affcons segment`` (blockwise, daisy 2) with 1 and 2 workers.

    nice .venv/bin/python benchmarks/postprocess.py [--sizes 256 512] [--block 128 128 128] [--context 8 8 8]

For each size S, an S^3 volume is made by mirroring the gala FIB-SEM ground truth (50 x 100 x 200 at 10 nm, reflected
at its faces until it covers S^3; then one id per connected piece), with network-like affinities from
:func:`affcons.synthetic.degraded_affinities` (the foundation benchmark's recipe). At the largest size it times
monolithic ``waterz.agglomerate`` (its own watershed + mean-affinity agglomeration, in a child process), then
``affcons segment`` with 1 and 2 workers, each as a child process whose process tree is sampled with psutil (peak RSS
per worker process). It prints throughput (Mvoxel/s), parallel efficiency, peak RSS per worker, VOI and ARAND of each,
the scheduling overhead, worker memory at each size (independent of the volume size), the merge tree's bytes per edge
checked on a large synthetic RAG,
and a Kasthuri15 projection of time and memory per stage from the measured rates.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import cc3d
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from affcons.evaluate import evaluate  # noqa: E402
from blockwise.testing import chunk_digests, load_labels, mirror_to, segment_argv, write_affinities  # noqa: E402


class TreeSampler:
    """Peak RSS of every process in the tree of ``pid`` (sampled every ``interval`` s), labelled by role."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def role(process) -> str:
        try:
            command = " ".join(process.cmdline())
        except Exception:
            return "?"
        if "daisy._subprocess_worker" in command or "blockwise.worker" in command:
            return "worker"
        return "driver" if "affcons" in command or "waterz" in command else "other"

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                role, peak = self.peaks.get(process.pid, (None, 0))
                self.peaks[process.pid] = (role or self.role(process), max(peak, rss))
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        workers = [peak for role, peak in self.peaks.values() if role == "worker"]
        driver = [peak for role, peak in self.peaks.values() if role == "driver"]
        return {
            "worker_peak_rss": max(workers, default=0),
            "workers_seen": len(workers),
            "driver_peak_rss": max(driver, default=0),
        }


def run_sampled(command: list[str], log: Path) -> tuple[float, dict, int]:
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        sampler = TreeSampler(process.pid)
        code = process.wait()
    elapsed = time.perf_counter() - start
    return elapsed, sampler.stop(), code


WATERZ_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, numpy as np, zarr, waterz
    affs = zarr.open_array(sys.argv[1])[:]
    thresholds = [float(t) for t in sys.argv[3].split(",")]
    start = time.perf_counter()
    results = {}
    for threshold, segmentation in zip(thresholds, waterz.agglomerate(affs, thresholds)):
        results[threshold] = segmentation.copy()
    elapsed = time.perf_counter() - start
    for threshold, segmentation in results.items():
        np.save(f"{sys.argv[2]}_{threshold:.2f}.npy", segmentation)
    print(json.dumps({"seconds": elapsed}), file=sys.stderr)
    """
)


def monolithic_waterz(affs_path: str, work: Path, thresholds) -> dict:
    script = work / "waterz_run.py"
    script.write_text(WATERZ_SCRIPT)
    log = work / "waterz.log"
    command = [sys.executable, str(script), affs_path, str(work / "waterz"), ",".join(map(str, thresholds))]
    wall, memory, code = run_sampled(command, log)
    if code != 0:
        raise RuntimeError(f"waterz failed, see {log}")
    inner = json.loads(log.read_text().strip().splitlines()[-1])["seconds"]
    return {
        "wall_s": wall,
        "agglomerate_s": inner,
        "peak_rss": memory["driver_peak_rss"],
        "segmentations": {t: work / f"waterz_{t:.2f}.npy" for t in thresholds},
    }


def blockwise(affs_path: str, out: Path, thresholds, block, context, workers: int) -> dict:
    argv = segment_argv(affs_path, str(out), thresholds, block, context, workers)
    command = [sys.executable, "-m", "affcons.cli", *argv]
    wall, memory, code = run_sampled(command, out.parent / f"{out.stem}.log")
    if code != 0:
        raise RuntimeError(f"affcons segment failed ({code}), see {out.parent / f'{out.stem}.log'}")
    summary = json.loads((out.parent / f"{out.stem}.affcons-run" / "summary.json").read_text())
    return {"wall_s": wall, "summary": summary, **memory}


def overhead(summary: dict, workers: int) -> dict:
    """Wall time of the blockwise stages not explained by block work spread over the workers."""
    stages = summary["stages"]
    busy = {
        s: stages[s]["read_s"] + stages[s]["compute_s"] + stages[s]["write_s"]
        for s in ("fragments", "edges", "extract")
    }
    walls = {s: stages[s]["wall_s"] for s in busy}
    ideal = sum(b / workers for b in busy.values())
    blockwise_wall = sum(walls.values())
    return {
        "busy_s": busy,
        "stage_wall_s": walls,
        "overhead_s": blockwise_wall - ideal,
        "overhead_fraction": (blockwise_wall - ideal) / summary["wall_s"],
        "startup_and_tail_s": {s: walls[s] - stages[s]["span_s"] for s in walls},
    }


TREE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, threading, numpy as np, psutil
    from affcons.segment import EdgeTable, build_merge_tree
    from affcons.segment.agglomerate import merge_tree_bytes_per_edge
    n_edges = int(float(sys.argv[1])); n_nodes = n_edges // 5
    rng = np.random.default_rng(0)
    pair = np.array([1, 2], np.uint64)
    warm = EdgeTable(pair, pair + 1, np.ones(2), np.ones(2, np.uint64), np.zeros((2, 0), np.uint32))
    build_merge_tree(warm)
    # a random sparse graph with a 3-D-like degree (~10): neighbours near in id
    u = rng.integers(1, n_nodes, n_edges).astype(np.uint64)
    v = u + rng.integers(1, 40, n_edges).astype(np.uint64)
    key = np.unique(u * np.uint64(2**32) + v)
    u, v = key // np.uint64(2**32), key % np.uint64(2**32)
    count = rng.integers(1, 20, len(u)).astype(np.uint64)
    linked = np.where(rng.random(len(u)) < 0.02, count, 0).astype(np.uint64)  # 2 % face edges to stitch
    edges = EdgeTable(u, v, rng.random(len(u)) * 10, count, np.zeros((len(u), 0), np.uint32), linked)
    process = psutil.Process(); base = process.memory_info().rss; peak = [base]; stop = threading.Event()
    def sample():
        while not stop.wait(0.01): peak[0] = max(peak[0], process.memory_info().rss)
    thread = threading.Thread(target=sample); thread.start()
    start = time.perf_counter(); tree = build_merge_tree(edges); seconds = time.perf_counter() - start
    stop.set(); thread.join()
    print(json.dumps({"edges": len(u), "seconds": seconds, "growth_bytes_per_edge": (peak[0] - base) / len(u),
                      "input_bytes_per_edge": edges.nbytes / len(u),
                      "model_bytes_per_edge": merge_tree_bytes_per_edge(0)}))
    """
)


def merge_tree_check(edges: float) -> dict:
    output = subprocess.run([sys.executable, "-c", TREE_SCRIPT, str(edges)], capture_output=True, text=True, cwd=REPO)
    if output.returncode:
        raise RuntimeError(output.stderr)
    return json.loads(output.stdout.strip().splitlines()[-1])


def scores(segmentation: np.ndarray, labels: np.ndarray) -> dict:
    metrics = evaluate(segmentation, labels)
    return {
        "voi": metrics["voi"],
        "voi_split": metrics["voi_split"],
        "voi_merge": metrics["voi_merge"],
        "arand": metrics["arand"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512], help="cube edge lengths, voxels")
    parser.add_argument("--block", nargs=3, type=int, default=[128, 128, 128])
    parser.add_argument("--context", nargs=3, type=int, default=[8, 8, 8])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--tree-edges", type=float, default=2e7, help="synthetic RAG size for the bytes/edge check")
    parser.add_argument("--work-dir", help="default: a temporary directory (removed at the end)")
    parser.add_argument("--skip-waterz", action="store_true")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="affcons-postprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; work dir {work}", flush=True)
    base, voxel_size = load_labels("gala")
    largest = max(args.sizes)
    results: dict = {"sizes": {}}
    for size in sorted(args.sizes):
        from affcons.synthetic import degraded_affinities

        start = time.perf_counter()
        # reflected copies of a label that do not touch are distinct objects: one id per connected piece
        labels = cc3d.connected_components(mirror_to(base, (size,) * 3), connectivity=6).astype(np.uint64)
        affs = degraded_affinities(labels, seed=0)
        affs_path = str(work / f"in{size}.zarr" / "affs")
        write_affinities(affs_path, affs, voxel_size, chunk_shape=(64, 64, 64))
        del affs
        print(f"{size}^3: volume ready in {time.perf_counter() - start:.0f} s", flush=True)
        entry: dict = {"voxels": size**3}
        if size == largest and not args.skip_waterz:
            waterz = monolithic_waterz(affs_path, work, args.thresholds)
            waterz["metrics"] = {t: scores(np.load(p), labels) for t, p in waterz.pop("segmentations").items()}
            entry["waterz"] = waterz
            print(f"{size}^3: waterz {waterz['wall_s']:.1f} s", flush=True)
        worker_counts = (1, 2) if size == largest else (2,)
        digests = {}
        for workers in worker_counts:
            out = work / f"out{size}_w{workers}.zarr"
            run = blockwise(affs_path, out, args.thresholds, args.block, args.context, workers)
            run["overhead"] = overhead(run["summary"], workers)
            digests[workers] = chunk_digests(out)
            if workers == worker_counts[-1]:
                import zarr

                run["metrics"] = {
                    t: scores(zarr.open_array(str(out / f"segmentation_{t:.2f}"))[:], labels) for t in args.thresholds
                }
            entry[f"blockwise_{workers}"] = run
            print(f"{size}^3: blockwise {workers} worker(s) {run['wall_s']:.1f} s", flush=True)
            shutil.rmtree(out.parent / f"{out.stem}.affcons-run" / "luts", ignore_errors=True)
        entry["identical_outputs_1_vs_2_workers"] = (
            len(set(map(lambda d: json.dumps(d, sort_keys=True), digests.values()))) == 1
        )
        results["sizes"][size] = entry
        del labels
    results["merge_tree"] = merge_tree_check(args.tree_edges)
    report(results, args, largest)
    (work / "postprocess.json").write_text(json.dumps(results, indent=2, default=str))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict, args, largest: int) -> None:
    from blockwise.plan import (
        KASTHURI_EDGES,
        KASTHURI_NODES,
        LARGE_MACHINE_BYTES,
        human_bytes,
        human_seconds,
        project,
        with_measurements,
    )

    entry = results["sizes"][largest]
    voxels = entry["voxels"]
    mega = voxels / 1e6
    print(
        f"\n=== {largest}^3 ({mega:.0f} Mvoxel, mirrored gala, degraded GT affinities), block {args.block}, "
        f"context {args.context}, thresholds {args.thresholds} ==="
    )
    rows = []
    if "waterz" in entry:
        w = entry["waterz"]
        rows.append(("monolithic waterz", w["wall_s"], w["peak_rss"], w["metrics"]))
    for workers in (1, 2):
        run = entry.get(f"blockwise_{workers}")
        if run:
            metrics = run.get("metrics") or entry["blockwise_2"]["metrics"]
            rows.append((f"affcons blockwise, {workers} worker(s)", run["wall_s"], run["worker_peak_rss"], metrics))
    header = f"{'run':34} {'wall s':>8} {'Mvox/s':>8} {'peak RSS/worker':>16}  " + "  ".join(
        f"VOI@{t:.1f}  ARAND@{t:.1f}" for t in args.thresholds
    )
    print(header)
    for name, wall, rss, metrics in rows:
        cells = "  ".join(f"{metrics[t]['voi']:7.3f}  {metrics[t]['arand']:9.3f}" for t in args.thresholds)
        print(f"{name:34} {wall:8.1f} {mega / wall:8.2f} {human_bytes(rss):>16}  {cells}")
    one, two = entry.get("blockwise_1"), entry.get("blockwise_2")
    if one and two:
        print(
            f"parallel efficiency (2 workers): {one['wall_s'] / (2 * two['wall_s']):.2f}; "
            f"outputs of 1 and 2 workers byte-identical: {entry['identical_outputs_1_vs_2_workers']}"
        )
    if "waterz" in entry and two:
        ratio = entry["waterz"]["wall_s"] / two["wall_s"]
        print(f"throughput blockwise 2 workers / monolithic waterz: {ratio:.2f}x (target >= 1.6x)")
    if two:
        o = two["overhead"]
        print(
            f"scheduling overhead (2 workers): {o['overhead_s']:.1f} s = {100 * o['overhead_fraction']:.1f} % of wall "
            f"(stage wall - block work / workers; startup+tail per stage "
            f"{ {k: round(v, 1) for k, v in o['startup_and_tail_s'].items()} })"
        )
        stages = two["summary"]["stages"]
        print("stage wall s (2 workers): " + ", ".join(f"{k} {v['wall_s']:.1f}" for k, v in stages.items()))
        a = stages["agglomerate"]
        print(
            f"agglomerate: {a['nodes']} nodes, {a['edges']} edges, edge table {a['edge_table_bytes_per_edge']:.0f} "
            f"B/edge, merge tree model {a['merge_tree_model_bytes_per_edge']} B/edge, measured peak growth "
            f"{a['measured_bytes_per_edge']:.0f} B/edge"
        )
    print(
        "\nworker memory vs volume size (2 workers): "
        + ", ".join(
            f"{s}^3 {human_bytes(e['blockwise_2']['worker_peak_rss'])}" for s, e in sorted(results["sizes"].items())
        )
    )
    tree = results["merge_tree"]
    print(
        f"merge tree on a synthetic RAG of {tree['edges']:.2g} edges: {tree['seconds']:.1f} s, peak growth "
        f"{tree['growth_bytes_per_edge']:.0f} B/edge (+ input table {tree['input_bytes_per_edge']:.0f} B/edge); "
        f"merge_tree_bytes_per_edge(0) = {tree['model_bytes_per_edge']}"
    )

    if not two:
        return
    summary = two["summary"]
    stages = summary["stages"]
    frag_read = stages["fragments"]["read_s"] + stages["fragments"]["compute_s"] + stages["fragments"]["write_s"]
    from blockwise.plan import read_voxels

    read_total, _ = read_voxels((largest,) * 3, args.block, args.context)
    a = stages["agglomerate"]
    edges_busy = stages["edges"]["read_s"] + stages["edges"]["compute_s"]
    rates = with_measurements(
        fragments_read_voxels_per_s=read_total / frag_read,
        edges_voxels_per_s=voxels / max(edges_busy, 1e-9),
        extract_voxels_per_s=voxels
        * len(args.thresholds)
        / max(stages["extract"]["read_s"] + stages["extract"]["compute_s"] + stages["extract"]["write_s"], 1e-9),
        store_write_edges_per_s=a["edges"] / max(stages["edges"]["write_s"], 1e-9),
        store_read_edges_per_s=a["edges"] / max(a["read_s"], 1e-9),
        agglomerate_edges_per_s=tree["edges"] / tree["seconds"],
        worker_bytes_per_read_voxel=two["worker_peak_rss"]
        / np.prod([b + 2 * c for b, c in zip(args.block, args.context)]),
        worker_base_bytes=0.0,
        agglomerate_bytes_per_edge=max(
            tree["growth_bytes_per_edge"] + tree["input_bytes_per_edge"],
            a["measured_bytes_per_edge"] if a["edges"] > 1e6 else 0,
        ),
    )
    print(
        "\nmeasured rates per worker: "
        + ", ".join(
            f"{k} {v:.3g}" for k, v in rates.__dict__.items() if k not in ("nodes_per_voxel", "edges_per_voxel")
        )
    )
    print(
        f"measured RAG density here: {a['nodes'] / voxels:.2e} nodes/voxel, {a['edges'] / voxels:.2e} edges/voxel "
        f"(Kasthuri15 typical: {KASTHURI_NODES / 2.56e11:.1e}, {KASTHURI_EDGES / 2.56e11:.1e})"
    )
    for edges, label in ((KASTHURI_EDGES, "typical"), (3e9, "upper range")):
        for bins, scoring in ((0, "mean"), (256, "quantile50")):
            projection = project(rates, edges=edges, workers=100, histogram_bins=bins)
            print(
                f"\nKasthuri15 projection ({label}: 8e7 nodes, {edges:.0e} edges; {scoring}; 100 workers of this "
                f"machine's speed; block 64x256x256, context 8x32x32, context overhead "
                f"{projection['context_overhead']:.2f}x):"
            )
            for stage, value in projection["stages"].items():
                memory = value.get("bytes_per_worker")
                memory_text = (
                    f"{human_bytes(memory)} per worker"
                    if memory is not None
                    else f"{human_bytes(value['bytes'])} total"
                )
                fit = ""
                if "fits_128GB" in value:
                    fit = (
                        " -> fits one 128 GB machine" if value["fits_128GB"] else " -> DOES NOT FIT one 128 GB machine"
                    )
                print(f"  {stage:28} {human_seconds(value['s']):>10}  {memory_text}{fit}")
            if bins == 0 and label == "upper range":
                break
    print(f"\n(one large machine = {LARGE_MACHINE_BYTES / 1e9:.0f} GB)")


if __name__ == "__main__":
    main()
