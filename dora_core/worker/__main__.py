"""``python -m dora_core.worker`` is the ``dora`` command."""

import sys

from dora_core.worker.cli import main

sys.exit(main())
