"""``python -m benchmarks.export throughput|masks|decode|ceilings [options]`` (see each module's --help)."""
from __future__ import annotations

import sys


def main() -> int:
    cmds = {"throughput": "benchmarks.export.throughput", "masks": "benchmarks.export.flower17_masks",
            "decode": "benchmarks.export.decode", "ceilings": "benchmarks.export.ceilings"}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(f"usage: python -m benchmarks.export {{{'|'.join(cmds)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(cmds[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
