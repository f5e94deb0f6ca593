"""python -m modelgate.serve --model=NAME --tag=TAG: the same as modelgate.cli.serve."""

import sys

from modelgate.cli.serve import main

sys.exit(main())
