"""Run the chaos scenarios and print the table.

python tests/chaos/run.py            # short: ~5 s per scenario
python tests/chaos/run.py --long     # 200 req/s, longer phases
python tests/chaos/run.py --only rolling_restart,scale
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent / "examples")]

from harness import HEADER, Result  # noqa: E402
from meshlab import LocalMesh  # noqa: E402
from scenarios import SCENARIOS  # noqa: E402


def run(names: list[str], rate: float, hold: float) -> list[Result]:
    """Each scenario in a fresh work dir; its row is printed as soon as it is done
    (a later scenario that crashes does not lose the earlier rows)."""
    results: list[Result] = []
    print(HEADER, flush=True)
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            lab = LocalMesh(Path(tmp))
            try:
                SCENARIOS[name](lab, rate, hold, results)
            finally:
                lab.close()
        print(results[-1].row(), results[-1].errors or "", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (default: by mode)")
    args = parser.parse_args()
    rate, hold = (200.0, 4.0) if args.long else (100.0, 1.0)
    rate = args.rate or rate
    run(args.only.split(","), rate, hold)


if __name__ == "__main__":
    main()
