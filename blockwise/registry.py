"""The blockwise steps by name, each with the config model its run directory stores: what a cluster worker
(``python -m blockwise.worker --step NAME``) rebuilds. Unknown names are refused by name. The global
``agglomerate`` step runs in the driver, never on workers, so it is not here."""

from affcons.config import load_config
from affcons.errors import ConfigError
from blockwise.config import PredictConfig, SegmentConfig
from blockwise.steps.edges import EdgesStep
from blockwise.steps.extract import ExtractStep
from blockwise.steps.fragments import FragmentsStep
from blockwise.steps.predict import PredictStep

#: step name -> (step class, config model of its run directory's config file)
STEPS = {
    "predict": (PredictStep, PredictConfig),
    "fragments": (FragmentsStep, SegmentConfig),
    "edges": (EdgesStep, SegmentConfig),
    "extract": (ExtractStep, SegmentConfig),
}


def step_class(name: str):
    """The class of the blockwise step ``name``."""
    if name not in STEPS:
        raise ConfigError(f"unknown step {name!r}; the blockwise steps are {', '.join(STEPS)}")
    return STEPS[name][0]


def load_step(name: str, config_path: str, **parameters):
    """The step ``name`` rebuilt from the resolved config file at ``config_path`` (``parameters`` go to the step's
    constructor, e.g. the extract task's ``thresholds``)."""
    step_class(name)
    step_type, config_model = STEPS[name]
    return step_type(load_config(config_model, config_path), **parameters)
