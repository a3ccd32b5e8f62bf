"""`python -m wsbalancer.devtools.conformance`: the same as `wsbalancer-conformance`."""

import sys

from wsbalancer.devtools.conformance.cli import main

if __name__ == "__main__":  # imported (by a tool walking the package), it runs nothing
    sys.exit(main())
