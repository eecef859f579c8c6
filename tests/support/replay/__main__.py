"""`python -m tests.support.replay`: see tests.support.replay.cli."""

import sys

from tests.support.replay.cli import main

sys.exit(main())
