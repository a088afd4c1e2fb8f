"""``python -m camkit``: the command line (also under ``torchrun -m camkit``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
