"""The ``affcons`` command line: the commands registered in the ``affcons.commands`` entry-point group (see
:mod:`affcons.commands`), each imported only when it runs.

Errors derived from :class:`~affcons.errors.AffconsError` are printed as one line on stderr with exit code 2; a run
with failed blocks exits with code 1.
"""

import argparse
import errno
import logging
import shutil
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

import affcons
from affcons.errors import AffconsError
from affcons.secrets import redact

ENTRY_POINT_GROUP = "affcons.commands"
#: Loggers of libraries shown only from this level on unless ``--verbose``.
QUIET_LOGGERS = {"numexpr": logging.WARNING, "daisy": logging.ERROR}
DESCRIPTION = "Sparsely supervised neuron segmentation for EM (CRAC) and blockwise processing on daisy 2."


def commands() -> dict:
    """Command name -> :class:`~affcons.commands.Command`, in registration order."""
    found = {entry.name: entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if not found:
        raise SystemExit(
            f"affcons: no commands are registered (entry-point group {ENTRY_POINT_GROUP!r}): install the package "
            "with `pip install -e .` (scripts/install.sh does)"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="affcons", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"affcons {affcons.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    modules = {}
    for name, command in commands().items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        if name == chosen:
            modules[name] = command.load()
            modules[name].configure_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.verbose:
        # libraries' chatter: numexpr's start-up line, and daisy's per-failure warnings with worker tracebacks (the
        # command reports every failed block itself, and the tracebacks are in the worker logs)
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
    try:
        return int(modules[args.command].run(args) or 0)
    except AffconsError as error:
        print(f"affcons {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the environment failed (a full disk, a lost mount): what was done so far is kept
        if args.verbose:
            traceback.print_exc()
        print(f"affcons {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 1


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: the error, the path, the free space of its file system when it is full, and what to
    do next."""
    text = redact(str(error))
    if error.errno in (errno.ENOSPC, errno.EDQUOT) and error.filename:
        directory = Path(error.filename).parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        free = shutil.disk_usage(directory).free
        text += f" (the file system of {directory} has {free / 1e6:.1f} MB free); free space there"
    else:
        text += "; fix the cause"
    return text + ", then re-run the same command: it resumes where it stopped"


if __name__ == "__main__":
    sys.exit(main())
