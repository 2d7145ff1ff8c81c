"""``python -m stablesdg``: names the package's two commands (it runs neither itself)."""

from __future__ import annotations

import sys

USAGE = """usage: StableSDG has two commands:
  python -m stablesdg.train stage=<stage> [key=value ...]   every stage and the pipeline (--help lists them)
  python -m stablesdg.report [--artifacts DIR] [...]        the paper's tables, ours beside the paper's (--help)
(--version: the versions of StableSDG, Python and the libraries that shape its results)"""


def main(argv: list[str]) -> int:
    """Print the two commands: on stdout with exit status 0 where ``--help`` (or ``-h``) was asked for, else on
    stderr with status 2, as for any command line that names no command; ``--version``: the versions of StableSDG and
    of what shapes its results (``provenance.versions_text``), with status 0."""
    if argv and argv[0] == "--version":
        from stablesdg.provenance import versions_text

        print(versions_text())
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
