"""`python -m mini_container.cli`: the same as the minictl command."""

import sys

from . import main

sys.exit(main())
