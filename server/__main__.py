"""`python -m tensorgate.server` is `tensorgate`."""

import sys

from .cli import main

sys.exit(main())
