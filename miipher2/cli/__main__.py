"""`python -m miipher2.cli ...` (what torchrun and subprocesses run)."""

import sys

from miipher2.cli import main

sys.exit(main())
