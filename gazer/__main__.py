"""`python -m gazer`: the `gazer` command."""

import sys

from gazer.cli import main

if __name__ == "__main__":
    sys.exit(main())
