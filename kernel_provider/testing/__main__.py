"""``python -m kernel_provider.testing``: same as the ``kernel-emulator`` console script."""

import sys

from kernel_provider.testing.cli import main

sys.exit(main())
