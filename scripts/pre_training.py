"""CRAC pre-training (stage 1 warm-up + stage 2 confidence net): python scripts/pre_training.py -c=pretraining_snemi3d

A thin wrapper around ``affcons pretrain`` (see affcons/commands/train.py); options are the same, e.g. ``--run-dir``,
``--resume``, ``--iterations``, ``--device``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, wherever the script is run from

from affcons.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
