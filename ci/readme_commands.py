#!/usr/bin/env python
"""Print the set-up commands of README.md's first ```bash block (the single source CI runs).

``--test`` prints only the second command (install the test extras and run the suite), which
``.ci/run`` executes verbatim so README and CI cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def setup_commands(readme: str) -> list[str]:
    """Non-empty, non-comment lines of the first ```bash block."""
    match = re.search(r"^```bash\n(.*?)^```", readme, re.S | re.M)
    if not match:
        raise SystemExit("README.md has no ```bash block with the set-up commands")
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="store_true", help="print only the test command (the second one)")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    commands = setup_commands(args.readme.read_text(encoding="utf-8"))
    if len(commands) != 2:
        print(f"README.md's first bash block must hold exactly two commands, found {len(commands)}", file=sys.stderr)
        return 1
    print(commands[1] if args.test else "\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
