"""`python -m sam2train.cli ...` (torchrun and SLURM launch the command this way)."""

import sys

from sam2train.cli.commands import main

sys.exit(main())
