"""CRAC consistency training, EMA variant: python scripts/main_ema.py -c=seg_snemi3d_d5_1024_u200_ema

A thin wrapper around ``affcons train`` (see affcons/commands/train.py); options are the same, e.g. ``--run-dir``,
``--resume``, ``--iterations``, ``--device``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, wherever the script is run from

from affcons.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
