"""Config loading: strict keys, typed values, NAME resolution, and every config in configs/ loads."""

from pathlib import Path

import pydantic
import pytest

from affcons.config import StrictModel, load_config, resolve_config_path
from affcons.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class Section(StrictModel):
    size: int
    name: str = "x"


class Example(StrictModel):
    section: Section
    rate: float = 0.1


def write(tmp_path, text, name="example.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_loads(tmp_path):
    config = load_config(Example, write(tmp_path, "section: {size: 3}\nrate: 0.5\n"))
    assert config.section.size == 3 and config.rate == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("section: {size: 3, sise: 4}\n", "unknown key 'section.sise'"),
        ("section: {name: a}\n", "missing required key 'section.size'"),
        ("section: {size: three}\n", "key 'section.size'"),
        ("section: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
    ],
)
def test_bad_configs_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(Example, path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_name_resolution_prefers_cwd_configs(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    local = write(tmp_path / "configs", "section: {size: 1}\n", "mine.yaml")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("mine") == local
    assert resolve_config_path("=mine".lstrip("=")) == local
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path("does_not_exist")


def test_configs_are_frozen(tmp_path):
    config = load_config(Example, write(tmp_path, "section: {size: 3}\n"))
    with pytest.raises(pydantic.ValidationError):
        config.rate = 1.0
