"""`python -m wsbalancer.devtools.conformance`: the same as `wsbalancer-conformance`."""

import sys

from wsbalancer.devtools.conformance.cli import main

sys.exit(main())
