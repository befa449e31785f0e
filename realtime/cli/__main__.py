"""``python -m realtime.cli`` = the ``stylestream`` console script."""

import sys

from realtime.cli import main

sys.exit(main())
