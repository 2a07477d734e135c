"""The one exception module of affcons.

Every error a user can cause derives from :class:`AffconsError` and from the builtin that describes it, so callers
may catch either. Messages name the file, key, dataset, block or URL that failed.
"""


class AffconsError(Exception):
    """Base class of all affcons errors; the CLI prints these without a traceback and exits with code 2."""


class ConfigError(AffconsError, ValueError):
    """A config file or command-line option is malformed: unknown key, wrong type, missing field."""


class VolumeError(AffconsError, ValueError):
    """A volume is missing, or has the wrong shape, dtype, voxel size or ROI."""


class OutputExistsError(AffconsError, FileExistsError):
    """An output exists (from another config) and would be overwritten."""


class StoreError(AffconsError, RuntimeError):
    """The graph store is unreachable or refused an operation."""


class CheckpointError(AffconsError, ValueError):
    """A checkpoint is missing or does not match the model config."""


class BlockwiseError(AffconsError, RuntimeError):
    """A blockwise task had failed or orphaned blocks; the message lists them."""


class BusyError(AffconsError, BlockingIOError):
    """Another process holds the run directory (its lock names the host and process)."""


class AgglomerationError(AffconsError, ValueError):
    """Inputs of the hierarchical agglomeration disagree: a block state file is corrupt or of another run, or edges
    refer to fragments that no block lists."""
