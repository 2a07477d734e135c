"""Edge scoring names (a light module: configs validate ``scoring`` without loading the compiled kernels)."""

import re

from affcons.errors import ConfigError

_SCORING = re.compile(r"^(mean|quantile(\d{1,2}|100))$")


def parse_scoring(scoring: str) -> int:
    """``"mean"`` -> -1; ``"quantileQ"`` (Q in 0..100, e.g. ``quantile50`` for the median) -> Q."""
    match = _SCORING.match(scoring)
    if not match:
        raise ConfigError(f"unknown scoring {scoring!r}: use 'mean' or 'quantileQ' with Q in 0..100 (e.g. quantile50)")
    return -1 if match.group(1) == "mean" else int(match.group(2))
