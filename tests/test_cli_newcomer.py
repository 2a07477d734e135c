"""What a new user meets first: ``--version``, quiet output, misspelled config names, the training order."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import affcons
from affcons.cli import main
from affcons.config import REPO_CONFIG_DIR, resolve_config_path
from affcons.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"affcons {affcons.__version__}"


def test_quiet_run_prints_no_numexpr_line(tmp_path):
    """numexpr logs 'NumExpr defaulting to N threads' at INFO when pandas first imports it, unless the thread count
    is set in the environment (as conftest sets OMP_NUM_THREADS): a user's shell has none of these."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
    command = [sys.executable, "-m", "affcons.cli", "run", "-c", "demo", "--dry-run", "--quiet"]
    result = subprocess.run(
        command + ["--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "numexpr" not in (result.stdout + result.stderr).lower(), result.stderr


def test_misspelled_config_suggests_names_and_lists_configs_once(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ of the current directory and of the repository are the same folder here
    with pytest.raises(ConfigError) as error:
        resolve_config_path("dmeo")
    message = str(error.value)
    assert "Did you mean 'demo'?" in message
    assert message.count(str(REPO_CONFIG_DIR)) == 1, message
    listed = message.split("Configs: ")[1].split(", ")
    assert listed == sorted(path.stem for path in REPO_CONFIG_DIR.glob("*.yaml"))


def test_misspelled_config_without_close_names_lists_the_configs():
    with pytest.raises(ConfigError, match=r"not found.*Configs: demo, ") as error:
        resolve_config_path("xyzzy")
    assert "Did you mean" not in str(error.value)


def test_train_before_pretraining_names_the_pretraining_command(tmp_path, capsys):
    """The S2 confidence net ``runs/isbi_pretraining_smoke/confidence.pt`` is what that pre-training writes."""
    missing = tmp_path / "runs" / "isbi_pretraining_smoke" / "confidence.pt"
    run_dir = tmp_path / "ws"
    code = main(["train", "-c", "isbi_ws_smoke", "--confidence-checkpoint", str(missing), "--run-dir", str(run_dir)])
    error = capsys.readouterr().err
    assert code == 2
    assert "`affcons pretrain -c isbi_pretraining_smoke`" in error and "--no-s2" in error, error
    assert str(missing) in error
    assert not run_dir.exists(), "nothing is written before the check"


def test_train_with_a_missing_confidence_net_of_unknown_origin(tmp_path, capsys):
    missing = tmp_path / "weights" / "confidence.pt"
    code = main(["train", "-c", "isbi_ws_smoke", "--confidence-checkpoint", str(missing), "--run-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2
    assert "`affcons pretrain -c CONFIG` writes runs/CONFIG/confidence.pt" in error and "--no-s2" in error, error
