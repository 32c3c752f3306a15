"""``python -m ctsr.cli``: the ``ctsr`` command."""
import sys

from ctsr.cli import main

sys.exit(main())
