"""``python -m dpdiff.cli ...`` (and ``torchrun -m dpdiff.cli ...``): the ``dpdiff`` command."""

import sys

from dpdiff.cli import main

sys.exit(main())
