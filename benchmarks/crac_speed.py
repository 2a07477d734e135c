"""CPU training speed of CRAC: the code at 3b88176 against the optimised one, in one run, on the same crops and nets.

Arms (each a real ``Trainer`` on the reduced protocol's ISBI setting, same seed, so the same initial weights and the
same crop stream; data loading in one worker process, as before):

  old       -- the code at 3b88176 with ``--threads 1``, the setting the reduced benchmark used: one intra-op
               thread, contiguous tensors, the two networks one after the other, Adam's default kernel, and that
               commit's S1 percentile (boolean compaction, two ``kthvalue``) and implicit affinities (autograd through
               one slice product per offset), both kept below and swapped in while this arm runs;
  new       -- channels-last 3-D tensors (oneDNN's 3-D convolution backward is 1.5-5x faster in that layout for these
               8-16 channel layers) and the two networks' forward passes, pseudo-label filters and backward passes
               in two threads (``run.parallel_branches``; one intra-op thread each), and the confidence net of S2
               with its BatchNorms folded into its convolutions (``run.fold_confidence_batchnorm``);
  intra-op  -- (``--intra-op``) channels-last with two intra-op threads instead of the branch threads.

Each arm lives in its own process (its own heap and thread pools: in one process the arms' allocations and threads
would interact), and the arms run interleaved, one at a time, in blocks of ``--block`` iterations, so that load from
other processes on a shared machine hits all of them alike; the first block of each arm is warm-up and not timed.
Two scenarios: S1 only, and S1+S2 (a randomly initialised confidence net filtering all 12 channels of both maps from
the first iteration, as after the gate). The script prints iterations/s per arm, the ratio to ``old``, where an
iteration goes (waiting for data, forward + pseudo-labels + loss, backward, optimiser), and the loss curves'
agreement (the arms compute the same function; only floating-point rounding differs). It also times the S1
percentile (3b88176: boolean compaction and two ``kthvalue`` calls; now: one ``topk`` over the masked tensor) on the
same entropy maps, and the confidence net's S2 pass over one teacher map, eager against BatchNorms folded.

    nice python benchmarks/crac_speed.py                # ~10-20 min on the shared 2-core machine
"""

import argparse
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import affcons.pseudo  # noqa: E402
import affcons.train.strategies  # noqa: E402
from affcons.affinities import shifted_pair_slices  # noqa: E402
from affcons.config import validate  # noqa: E402
from affcons.nets import build_confidence_net, fold_batchnorm  # noqa: E402
from affcons.pseudo import binary_entropy, s1_mask  # noqa: E402
from affcons.train.config import ConfidenceModelConfig, CRACConfig  # noqa: E402
from affcons.train.dataset import CropDataset  # noqa: E402
from affcons.train.strategies import CRACStrategy  # noqa: E402
from affcons.train.trainer import Trainer, seed_everything  # noqa: E402

ISBI = "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"
CONFIDENCE_FILTERS = [4, 6, 8, 12, 16]  # the reduced protocol's CPSN (benchmarks/crac_protocol.py)
ARMS = {
    "old": {"threads": 1, "channels_last": False, "parallel_branches": False, "fused_optimizer": False, "fold": False},
    "new": {"threads": 1, "channels_last": True, "parallel_branches": True, "fused_optimizer": True, "fold": True},
    "intra-op": {
        "threads": 2,
        "channels_last": True,
        "parallel_branches": False,
        "fused_optimizer": True,
        "fold": True,
    },
}


def s1_mask_at_3b88176(
    entropy: torch.Tensor, candidates: torch.Tensor, alpha: float, max_elements: int = 16_000_000, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """3b88176's S1 mask: the candidates' entropies compacted, then two ``kthvalue`` calls (no subsampling: the
    benchmark's batches stay below ``max_elements``)."""
    selected = entropy[candidates].float()
    if alpha <= 0.0 or selected.numel() == 0:
        return torch.ones_like(entropy, dtype=torch.bool), float("inf")
    position = (1.0 - alpha) * (selected.numel() - 1)
    lower = int(position)
    low = torch.kthvalue(selected, lower + 1).values
    high = torch.kthvalue(selected, min(lower + 2, selected.numel())).values
    gamma = low + (position - lower) * (high - low)
    return entropy < gamma, float(gamma)


def implicit_affinities_at_3b88176(embedding: torch.Tensor, offsets, eps: float = 1e-12) -> torch.Tensor:
    """3b88176's implicit affinities: autograd through one slice product per offset, zero-padded and stacked."""
    normalised = F.normalize(embedding.float(), p=2.0, dim=1, eps=eps)
    spatial = tuple(normalised.shape[2:])
    channels = []
    for offset in offsets:
        at_p, at_partner = shifted_pair_slices(spatial, tuple(offset))
        if any(s.stop <= s.start for s in at_p):
            channels.append(normalised.new_zeros((normalised.shape[0], *spatial)))
            continue
        product = normalised[(slice(None), slice(None), *at_p)] * normalised[(slice(None), slice(None), *at_partner)]
        pad = [bound for axis in (2, 1, 0) for bound in (at_p[axis].start, spatial[axis] - at_p[axis].stop)]
        channels.append(F.pad(product.sum(dim=1), pad))
    return torch.stack(channels, dim=1)


@contextlib.contextmanager
def code_at_3b88176():
    """Swap 3b88176's S1 mask and implicit affinities into the library while the ``old`` arm runs."""
    saved = affcons.pseudo.s1_mask, affcons.train.strategies.implicit_affinities
    affcons.pseudo.s1_mask, affcons.train.strategies.implicit_affinities = (
        s1_mask_at_3b88176,
        implicit_affinities_at_3b88176,
    )
    try:
        yield
    finally:
        affcons.pseudo.s1_mask, affcons.train.strategies.implicit_affinities = saved


def config(arm: dict, iterations: int, s2: bool) -> CRACConfig:
    return validate(
        CRACConfig,
        {
            "kind": "crac",
            "variant": "ws",
            "data": {
                "train": {
                    "raw": f"{ISBI}:raw",
                    "labels": f"{ISBI}:labels/neurites_3dcc",
                    "roi": {"begin": [0, 0, 0], "end": [20, 512, 512]},
                },
                "sparse": {"mode": "fraction", "value": 0.1, "seed": 555},
                "crop": [8, 80, 80],
                "margin": [0, 24, 24],
                "num_workers": 1,
            },
            "model": {"filters": [8, 12, 16, 24, 32], "embedding_channels": 16, "bn_momentum": 0.1},
            "run": {
                "iterations": iterations,
                "batch_size": 2,
                "seed": 555,
                "checkpoint_every": 10**9,
                "log_every": 10**9,
                "image_every": 0,
                "channels_last": arm["channels_last"],
                "parallel_branches": arm["parallel_branches"],
                "fused_optimizer": arm["fused_optimizer"],
                "fold_confidence_batchnorm": arm["fold"],
            },
            "optim": {"lr": 1e-3, "eps": 1e-8},
            "validation": {"volume": None},
            "pseudo": {"s2": {"enabled": s2, "gate": 0}},
        },
        "speed benchmark config",
    )


def _arm_process(name: str, scenario: str, iterations: int, out: str, connection) -> None:
    """One arm in its own process (own heap, own thread pools): build its trainer, then run a block of iterations each
    time the parent sends a block length, answering (wall seconds, CPU seconds); ``None`` ends it with the history."""
    torch.set_num_threads(ARMS[name]["threads"])
    s2 = scenario == "S1+S2"
    cfg = config(ARMS[name], iterations, s2)
    seed_everything(cfg.run.seed, True)
    confidence = None
    if s2:
        confidence = build_confidence_net(ConfidenceModelConfig(filters=CONFIDENCE_FILTERS, bn_momentum=0.1))
        confidence.eval().requires_grad_(False)
    strategy = CRACStrategy(cfg, torch.device("cpu"), confidence)
    dataset = CropDataset(cfg.data, cfg.model.offsets, cfg.run.seed, cfg.run.batch_size)
    trainer = Trainer(strategy, cfg, dataset, Path(out), "crac", cfg.run.iterations, torch.device("cpu"))
    connection.send("ready")
    with code_at_3b88176() if name == "old" else contextlib.nullcontext():
        while (block := connection.recv()) is not None:
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.run(stop_at=trainer.iteration + block)
            connection.send((time.perf_counter() - start, time.process_time() - cpu_start))
    connection.send(trainer.history)


def measure(scenario: str, arms: list[str], blocks: int, block: int, out: Path) -> dict:
    """Interleaved blocks of every arm, each arm in its own process, one arm running at a time; returns per-arm
    timings and loss histories."""
    # fork, Linux's default: a spawned arm would also spawn its DataLoader worker, pickling the volume to it on every
    # ``Trainer.run`` (~2.5 s per block, measured)
    context = multiprocessing.get_context("fork")
    connections, processes = {}, []
    for name in arms:
        parent, child = context.Pipe()
        process = context.Process(
            target=_arm_process, args=(name, scenario, blocks * block, str(out / scenario / name), child)
        )
        process.start()
        connections[name] = parent
        processes.append(process)
    for name in arms:
        if connections[name].recv() != "ready":
            raise RuntimeError(f"arm {name} did not start")
    seconds = {name: 0.0 for name in arms}
    cpu_seconds = {name: 0.0 for name in arms}
    for index in range(blocks):
        for name in arms:
            connections[name].send(block)
            wall, cpu = connections[name].recv()
            if index > 0:
                seconds[name] += wall
                cpu_seconds[name] += cpu
    histories = {}
    for name in arms:
        connections[name].send(None)
        histories[name] = connections[name].recv()
    for process in processes:
        process.join()
    timed = (blocks - 1) * block
    result = {}
    for name in arms:
        history = histories[name][block:]
        result[name] = {
            "iterations_per_second": timed / seconds[name],
            "cpu_seconds_per_iteration": cpu_seconds[name] / timed,
            "phases": {key: float(np.mean([h[key] for h in history])) for key in history[0] if key.startswith("time/")},
            "losses": [h["loss/total"] for h in histories[name]],
        }
    return result


def percentile_timing(repeats: int) -> dict:
    """Seconds per S1 threshold on a batch-sized entropy map: 3b88176's compaction + 2 kthvalue vs the masked topk."""
    generator = torch.Generator().manual_seed(0)
    entropy = binary_entropy(torch.rand(2, 12, 8, 80, 80, generator=generator))
    candidates = torch.rand(2, 12, 8, 80, 80, generator=generator) < 0.9
    alpha = 0.005

    def head() -> float:
        return s1_mask_at_3b88176(entropy, candidates, alpha)[1]

    def now() -> float:
        return s1_mask(entropy, candidates, alpha)[1]

    timings = {}
    for name, function in (("head", head), ("now", now)):
        function()
        start = time.perf_counter()
        for _ in range(repeats):
            value = function()
        timings[name] = {"seconds": (time.perf_counter() - start) / repeats, "gamma": value}
    return timings


def confidence_timing(rounds: int) -> dict:
    """Seconds per S2 pass of one teacher map (2 crops x 12 channels of 8x80x80 in chunks of 8) through the reduced
    protocol's CPSN, eager vs BatchNorms folded, channels-last, interleaved; BatchNorm statistics randomised so that
    folding changes the weights. Median of ``rounds``, and the largest output difference."""
    generator = torch.Generator().manual_seed(0)
    net = build_confidence_net(ConfidenceModelConfig(filters=CONFIDENCE_FILTERS, bn_momentum=0.1))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    nets = {"eager": net.eval().requires_grad_(False).to(memory_format=torch.channels_last_3d)}
    nets["folded"] = fold_batchnorm(nets["eager"])
    stacked = torch.rand(24, 3, 8, 80, 80, generator=generator).contiguous(memory_format=torch.channels_last_3d)

    @torch.no_grad()
    def one_map(net) -> torch.Tensor:
        return torch.cat([net(stacked[start : start + 8]) for start in range(0, 24, 8)])

    outputs = {name: one_map(net) for name, net in nets.items()}  # also the warm-up
    seconds = {name: [] for name in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            start = time.perf_counter()
            one_map(net)
            seconds[name].append(time.perf_counter() - start)
    return {
        **{name: float(np.median(values)) for name, values in seconds.items()},
        "max_difference": float((outputs["folded"] - outputs["eager"]).abs().max()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="blocks per arm (the first is warm-up)")
    parser.add_argument("--block", type=int, default=10, help="iterations per block")
    parser.add_argument("--intra-op", action="store_true", help="also time two intra-op threads (no branch threads)")
    parser.add_argument("--scenarios", default="S1,S1+S2", help="S1 and/or S1+S2")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the confidence-net timing")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    arms = ["old", "new"] + (["intra-op"] if args.intra_op else [])
    print(
        f"CRAC CPU training speed, reduced ISBI setting (8-32 channel nets, 2 crops of 8x80x80, WS); arms {arms}; "
        f"{args.blocks - 1} timed blocks of {args.block} iterations per arm, interleaved"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="crac-speed-") as scratch:
        for scenario in args.scenarios.split(","):
            results[scenario] = measure(scenario, arms, args.blocks, args.block, Path(scratch))
            old = results[scenario]["old"]
            print(f"\n{scenario}:")
            for name in arms:
                r = results[scenario][name]
                phases = ", ".join(f"{k.split('/')[1]} {1000 * v:.0f} ms" for k, v in r["phases"].items())
                losses = np.asarray(r["losses"])
                reference = np.asarray(old["losses"])
                difference = float(np.max(np.abs(losses - reference) / np.abs(reference)))
                speed, cpu = r["iterations_per_second"], r["cpu_seconds_per_iteration"]
                print(
                    f"  {name:<8} {speed:.3f} it/s  x{speed / old['iterations_per_second']:.2f}; "
                    f"{cpu:.2f} CPU s/it  x{old['cpu_seconds_per_iteration'] / cpu:.2f}"
                    f"  ({phases}); loss curve vs old: max relative difference {difference:.1e}"
                )
    torch.set_num_threads(1)
    timing = percentile_timing(20)
    results["percentile"] = timing
    print(
        f"\nS1 threshold on 2x12x8x80x80 entropies: 3b88176 {1000 * timing['head']['seconds']:.1f} ms, now "
        f"{1000 * timing['now']['seconds']:.1f} ms (x{timing['head']['seconds'] / timing['now']['seconds']:.1f}; "
        f"gamma {timing['head']['gamma']:.6f} vs {timing['now']['gamma']:.6f}); two per iteration"
    )
    cpsn = confidence_timing(args.rounds)
    results["confidence_pass"] = cpsn
    print(
        f"S2 confidence net, one teacher map (24 samples of 8x80x80): eager {1000 * cpsn['eager']:.0f} ms, BatchNorms "
        f"folded {1000 * cpsn['folded']:.0f} ms (x{cpsn['eager'] / cpsn['folded']:.2f}; outputs within "
        f"{cpsn['max_difference']:.1e}); two per iteration, one per branch thread"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
