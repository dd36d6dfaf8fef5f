"""`python -m covsim ...`: the covsim command line (covsim.cli)."""

import sys

from covsim.cli import main

sys.exit(main())
