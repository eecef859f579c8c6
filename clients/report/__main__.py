import sys

from clients.report.cli import main

sys.exit(main())
