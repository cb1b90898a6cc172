"""``python -m mixlab.report``: the command line of :mod:`mixlab.study.report`, kept at this name."""
import sys

from .study.report import main

if __name__ == "__main__":
    sys.exit(main())
