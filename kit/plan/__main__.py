import sys

from kit.plan.cli import main

sys.exit(main())
