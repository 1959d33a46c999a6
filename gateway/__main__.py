"""``python -m gateway`` is the ``telematics`` command."""

import sys

from gateway.cli import main

sys.exit(main())
