"""Steps by type tag: the ``step_type`` of a config section picks the class; unknown tags are refused by name."""

from affcons.errors import ConfigError
from blockwise.agglomerate import AgglomerateStep
from blockwise.config import SegmentConfig
from blockwise.edges import EdgesStep
from blockwise.extract import ExtractStep
from blockwise.fragments import FragmentsStep

STEP_TYPES = {
    "fragments": FragmentsStep,
    "edges": EdgesStep,
    "agglomerate": AgglomerateStep,
    "extract": ExtractStep,
}
#: The steps that run block by block on daisy workers (``agglomerate`` runs once, in the driver).
BLOCKWISE_STEPS = ("fragments", "edges", "extract")


def step_class(step_type: str):
    try:
        return STEP_TYPES[step_type]
    except KeyError:
        raise ConfigError(f"unknown step_type {step_type!r}; known: {', '.join(STEP_TYPES)}") from None


def build_step(config: SegmentConfig, name: str, **parameters):
    """The step ``name`` of ``config``, built from its section's ``step_type`` (``parameters`` go to the class)."""
    section = config.step_config(name)
    return step_class(section.step_type)(config, **parameters)
