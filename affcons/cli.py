"""The ``affcons`` command line: one sub-command per module, imported only when used.

Each command module defines ``configure_parser(parser)`` and ``run(args) -> int``. Errors derived from
:class:`~affcons.errors.AffconsError` are printed as one line on stderr with exit code 2; a run with failed blocks
exits with code 1.
"""

import argparse
import importlib
import logging
import sys

import affcons
from affcons.errors import AffconsError

COMMANDS = {
    "import": ("affcons.commands.import_volume", "convert HDF5, TIFF or zarr (v2, v3) into chunked zarr v3"),
    "info": ("affcons.commands.info", "print shape, dtype, voxel size, ROI, chunks and value range of a volume"),
    "evaluate": ("affcons.commands.evaluate", "VOI split/merge and adapted Rand error of a segmentation"),
    "segment": ("blockwise.commands.segment", "blockwise fragments -> RAG -> agglomeration -> segmentations"),
    "predict": ("blockwise.commands.predict", "blockwise affinity prediction with a trained network"),
    "pretrain": ("affcons.commands.train", "pre-training: sparse warm-up and the confidence network"),
    "train": ("affcons.commands.train", "CRAC consistency training (weight-sharing or EMA variant)"),
    "run": ("blockwise.commands.run", "the main job: prediction -> segmentation -> evaluation"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="affcons", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"affcons {affcons.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module_name=module_name)
        if name == chosen:
            importlib.import_module(module_name).configure_parser(sub)
    args = parser.parse_args(argv)
    if not args.verbose:  # numexpr (imported by pandas, by dask) logs its thread count at INFO when first imported
        logging.getLogger("numexpr").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    module = importlib.import_module(args.module_name)
    try:
        return int(module.run(args) or 0)
    except AffconsError as error:
        print(f"affcons {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
