"""`python -m kit.cluster`: run the cluster tool's CLI."""

import sys

from kit.cluster import main

sys.exit(main())
