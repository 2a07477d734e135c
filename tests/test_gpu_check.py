"""The GPU check's code path on the CPU with tiny networks (``--device cpu --tiny``), so it cannot rot between GPU
sightings: every phase runs, the summary is small and complete, nothing else is left behind, failures exit non-zero.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from affcons.nets import CRACNetworks
from affcons.predict import PatchGrid, Predictor
from affcons.train.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_predict", REPO / "benchmarks" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(out: Path, work: Path, *options: str) -> subprocess.CompletedProcess:
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--out",
            str(out),
            "--work-dir",
            str(work),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_check_runs_every_phase_on_the_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = _check(out, work, "--device", "cpu", "--tiny")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["gpu-check.json", "gpu-check.log"]
    assert sum(path.stat().st_size for path in out.iterdir()) < 100_000
    assert list(work.iterdir()) == []  # the temporary work folder is gone: a second run starts fresh
    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["status"] == "passed"
    assert summary["environment"]["packages"]["zarr"]["version"]
    phases = summary["phases"]
    assert [phases[name]["status"] for name in ("matrix", "training", "prediction")] == ["passed"] * 3
    assert phases["matrix"]["tflops"] > 0
    training = phases["training"]
    assert training["fp32"]["iterations_per_s"] > 0 and training["loader_batches_per_s"] > 0
    assert training["bf16"] == {"skipped": "the trainer applies run.amp on CUDA only"}
    prediction = phases["prediction"]
    assert prediction["batch"] == 2 and prediction["blockwise_precision"] == "fp32"
    assert min(prediction[key] for key in ("whole_fp32_voxels_per_s", "whole_bf16_voxels_per_s")) > 0
    assert prediction["blockwise_voxels_per_s"] > 0 and prediction["flop_per_output_voxel"] > 0
    assert 0 < prediction["blockwise_fraction_of_matrix_rate"] < 1
    assert prediction["blockwise_blocks"] == 4 and prediction["blockwise_wall_s"] > prediction["blockwise_span_s"] > 0
    log = (out / "gpu-check.log").read_text()
    assert "gpu check passed" in log and log == result.stdout


def test_a_check_that_cannot_run_exits_non_zero_with_a_summary(tmp_path):
    out = tmp_path / "out"
    result = _check(out, tmp_path / "work", "--device", "cuda")  # the suite hides every GPU
    assert result.returncode == 2
    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["status"] == "failed" and "torch sees no GPU" in summary["error"]
    assert "gpu check cannot run here" in (out / "gpu-check.log").read_text()


def test_the_warm_up_runs_every_batch_shape_of_the_timed_pass():
    """cuDNN autotunes per input shape: a warm-up with other batch sizes would leave the tuning in the timed pass."""
    networks = CRACNetworks.from_config(ModelConfig(filters=[2, 2, 2, 2, 2], embedding_channels=2))
    predictor = Predictor(networks, PatchGrid((4, 32, 32), (0, 0, 0)), channels=3, batch_size=3)
    seen = []
    predictor.networks.embedding_net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[0]))
    _benchmark_module().warm_up(predictor, (8, 64, 128))  # 2 x 2 x 4 = 16 tiles: five batches of 3, one of 1
    assert sorted(seen) == [1, 3]
