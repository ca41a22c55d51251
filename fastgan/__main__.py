"""``python -m fastgan`` is the ``fastgan`` command (what ``torchrun ... -m fastgan train`` runs on each rank)."""
import sys

from fastgan.cli import main

sys.exit(main())
