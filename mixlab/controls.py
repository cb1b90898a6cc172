"""``python -m mixlab.controls``: the command line of :mod:`mixlab.study.controls`, kept at this name."""
import sys

from .study.controls import main

if __name__ == "__main__":
    sys.exit(main())
