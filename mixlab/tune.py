"""``python -m mixlab.tune``: the command line of :mod:`mixlab.study.tune`, kept at this name."""
import sys

from .study.tune import main

if __name__ == "__main__":
    sys.exit(main())
