"""Command-line entry points of the blockwise pipeline (dispatched by :mod:`affcons.cli`)."""
