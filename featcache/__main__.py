"""`python -m featcache`: the `featcache` command."""

import sys

from featcache.cli import main

sys.exit(main())
