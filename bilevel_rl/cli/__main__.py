"""``python -m bilevel_rl.cli`` is the ``bilevel-rl`` command."""

import sys

from bilevel_rl.cli import main

sys.exit(main())
