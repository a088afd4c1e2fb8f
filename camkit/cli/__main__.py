"""``python -m camkit.cli``: the command line (as ``python -m camkit``)."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
