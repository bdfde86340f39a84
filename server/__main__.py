"""`python -m server` is `tensorgate`."""

import sys

from .cli import main

sys.exit(main())
