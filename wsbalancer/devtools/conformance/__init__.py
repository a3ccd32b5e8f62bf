"""The Autobahn TestSuite conformance runner, `wsbalancer-conformance` and
`python -m wsbalancer.devtools.conformance`: the legs are described in `cli` (which is what
`--help` prints).

- `cases`: the case catalogue, which cases each leg runs, the allow-list;
- `servers`: the echo backends, the balancer, the TLS leg's certificate and pipe;
- `runners`: the fuzzing client's command line, the backend leg's echoing testee;
- `legs`: each leg's processes and runner passes, `run_legs`;
- `report`: reading the runner's results into summaries and tables;
- `cli`: the command line.
"""

from wsbalancer.devtools.conformance.cases import ALL_CASES, ALLOW_LIST, LEGS
from wsbalancer.devtools.conformance.cli import main
from wsbalancer.devtools.conformance.legs import run_legs

__all__ = ["ALL_CASES", "ALLOW_LIST", "LEGS", "main", "run_legs"]
