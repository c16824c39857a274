"""`python -m sam2train.cli ...` (torchrun and SLURM launch the command this way)."""

import sys

from sam2train.cli import main

sys.exit(main())
