"""``python -m extauthz`` runs the command line."""

import sys

from extauthz.cli import main

sys.exit(main())
