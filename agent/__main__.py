"""``python -m agent``: see ``agent.cli``."""

import os
import sys

# Before torch is imported: torch's OpenMP threads spin-wait by default and then stall for long
# stretches when env worker processes share the CPU cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
