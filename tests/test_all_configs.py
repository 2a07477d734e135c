"""Every YAML file in configs/ loads into its typed config (the README and the docs name them)."""

from pathlib import Path

import pytest

from affcons.config import load_config, read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def config_model(path: Path):
    """The config class of a file in configs/: job configs, segmentation defaults, or training configs by kind."""
    from affcons.train.config import config_class
    from blockwise.config import JobConfig, SegmentOptions

    if path.stem == "demo" or path.stem.startswith("run_"):
        return JobConfig
    if path.stem.startswith("segment_"):
        return SegmentOptions
    return config_class(read_yaml(path).get("kind", "crac"))


def test_there_are_configs():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads(path):
    config = load_config(config_model(path), path)
    assert config is not None


def test_the_readme_configs_exist():
    readme = (CONFIG_DIR.parent / "README.md").read_text()
    for name in ("demo", "pretraining_snemi3d", "seg_snemi3d_d5_u200", "seg_snemi3d_d5_1024_u200_ema"):
        assert (CONFIG_DIR / f"{name}.yaml").is_file()
        assert name in readme
