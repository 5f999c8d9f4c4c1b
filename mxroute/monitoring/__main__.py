"""``python -m mxroute.monitoring [DIR]``: write the rule file and the dashboard under DIR
(default ``deploy``): prometheus/mxroute-rules.yml, grafana/mxroute.json."""

from __future__ import annotations

import sys
from pathlib import Path

from mxroute.monitoring.files import write_all


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path("deploy")
    for path in write_all(root):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
