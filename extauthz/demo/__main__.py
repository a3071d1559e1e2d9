"""``python -m extauthz.demo``: see :mod:`extauthz.demo.main`."""

import sys

from extauthz.demo.main import main

sys.exit(main())
