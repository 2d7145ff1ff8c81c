"""``python -m stablesdg.report``: summaries built from ``result.json`` files only.

Sub-commands:

* ``sweep --artifacts DIR --dataset NAME [--variant V] [--metric fid]``: aggregate an (s, ω) sweep
  (see ``stablesdg.sweeps``).
"""

from __future__ import annotations

import argparse
import sys

from stablesdg.errors import UserError
from stablesdg.sweeps import TUNED_FILE, aggregate_sweep


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; a ``UserError`` prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog="python -m stablesdg.report", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="aggregate a strength/guidance sweep and pick the best setting")
    sweep.add_argument("--artifacts", default="artifacts")
    sweep.add_argument("--dataset", required=True)
    sweep.add_argument("--variant", default="default")
    sweep.add_argument("--metric", default="fid", choices=["fid", "kid_mean"])
    args = parser.parse_args(argv)
    try:
        best = aggregate_sweep(args.artifacts, args.dataset, args.variant, args.metric)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for category, setting in best.items():
        print(f"{category}: strength {setting['strength']:g}, guidance_scale {setting['guidance_scale']:g}, "
              f"{args.metric} {setting[args.metric]:.4f}")
    print(f"tuned settings: {args.artifacts}/{args.dataset}/sweeps/{args.variant}/{TUNED_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
