"""On-demand soak of the compressed collectives (tests/collectives/soak.py); CI runs a short one.

    PYTHONPATH=. python benchmarks/soak.py --calls 10000 [--world 3] [--seed 0]

Prints the report as JSON (calls, seconds, calls per kind, ranks' resident
memory / thread / file-descriptor growth after the warm-up, any call whose
result differed across ranks or left the format's bound) and exits 1 if the
soak failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from tests.collectives.soak import as_dict, check, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--world", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = run_soak(args.calls, args.world, args.seed)
    problems = check(report)
    print(json.dumps({**as_dict(report), "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
