"""Typed, strict YAML configs.

Config classes derive from :class:`StrictModel` (pydantic, unknown keys forbidden, frozen). :func:`load_config`
resolves ``NAME`` to ``configs/NAME.yaml`` (current directory first, then the repository's ``configs/``) or takes a
path, and turns every validation problem into a :class:`~affcons.errors.ConfigError` naming the key and the file.
"""

import difflib
from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from affcons.errors import ConfigError
from affcons.files import write_text
from affcons.secrets import redact

#: The repository that holds this package: relative paths in configs are taken from here, never from the cwd.
REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_CONFIG_DIR = REPO_ROOT / "configs"


class StrictModel(pydantic.BaseModel):
    """Base of all config sections: unknown keys are errors, values are immutable, types are not coerced loosely."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


ModelT = TypeVar("ModelT", bound=StrictModel)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Return the YAML file for ``name_or_path``: an existing path, else ``configs/NAME.yaml``.

    ``configs/`` is looked up in the current directory first, then in the repository that holds this package. An
    unknown name is a ConfigError that suggests the closest names and lists the configs there are.
    """
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    name = candidate.name if candidate.suffix in (".yaml", ".yml") else f"{candidate.name}.yaml"
    directories = list(dict.fromkeys(d.resolve() for d in (Path.cwd() / "configs", REPO_CONFIG_DIR)))
    for directory in directories:
        if (directory / name).is_file():
            return directory / name
    available = sorted({path.stem for directory in directories for path in directory.glob("*.yaml")})
    close = difflib.get_close_matches(Path(name).stem, available, n=3, cutoff=0.6)
    suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"config {str(name_or_path)!r} not found: no such file, and no {name} in "
        f"{' or '.join(str(d) for d in directories)}.{suggestion} "
        f"Configs: {', '.join(available) or 'none'}"
    )


def read_yaml(path: Path) -> dict:
    """Parse a YAML mapping with the safe loader; a syntax error or a non-mapping is a ConfigError."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def validate(model: type[ModelT], data: dict, source: str) -> ModelT:
    """Validate ``data`` into ``model``; errors name each offending key (dotted) and ``source``."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "<top level>"
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif item["type"] == "missing":
                problems.append(f"missing required key '{key}'")
            elif not item["loc"]:  # a check of the whole model: its input is every value (secrets included)
                problems.append(item["msg"].removeprefix("Value error, "))
            else:
                problems.append(f"key '{key}': {item['msg']} (got {item.get('input')!r})")
        raise ConfigError(redact(f"{source}: " + "; ".join(problems))) from None


def load_config(model: type[ModelT], name_or_path: str | Path) -> ModelT:
    """Load and validate a config file into ``model``."""
    path = resolve_config_path(name_or_path)
    return validate(model, read_yaml(path), str(path))


def dump_config(config: StrictModel, path: Path, mode: int | None = None) -> None:
    """Write ``config`` as YAML (JSON-compatible values), atomically, so a run records exactly what it used."""
    write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), mode)
