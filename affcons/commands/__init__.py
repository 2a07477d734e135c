"""The commands of the ``affcons`` CLI. Each is registered in the ``affcons.commands`` entry-point group of
``setup.py`` as a :class:`Command`: a one-line help and the module that implements it, imported only when the
command runs. A command module defines ``configure_parser(parser)`` and ``run(args) -> int``.

This package holds the commands of the in-memory layer (import, info, evaluate, pretrain, train); the blockwise
commands (segment, predict, run) live in :mod:`blockwise.commands` and register the same way, so the CLI
(:mod:`affcons.cli`) never imports the blockwise layer by name.
"""

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A CLI command: its one-line help and the module implementing it."""

    help: str
    module: str

    def load(self):
        """The command's module (``configure_parser``, ``run``)."""
        return importlib.import_module(self.module)


IMPORT = Command("convert HDF5, TIFF or zarr (v2, v3) into chunked zarr v3", "affcons.commands.import_volume")
INFO = Command("print shape, dtype, voxel size, ROI, chunks and value range of a volume", "affcons.commands.info")
EVALUATE = Command("VOI split/merge and adapted Rand error of a segmentation", "affcons.commands.evaluate")
PRETRAIN = Command("pre-training: sparse warm-up and the confidence network", "affcons.commands.train")
TRAIN = Command("CRAC consistency training (weight-sharing or EMA variant)", "affcons.commands.train")
