"""``python -m zoo.bench [options]``: the same as ``zoo bench [options]``."""

import sys

from zoo.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
