"""`python -m launcher ...` is the same as the `dptrain` console script."""
import sys

from .cli import main

sys.exit(main())
