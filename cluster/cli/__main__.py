"""`python -m cluster.cli ...` is the `clearline` command."""

import sys

from cluster.cli import main

sys.exit(main())
