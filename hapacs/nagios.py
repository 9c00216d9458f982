"""check_hapacs: a monitoring plugin for NRPE and Icinga agents (placeholder, being written)."""

import sys


def main() -> int:
    print("HAPACS UNKNOWN - check_hapacs is not written yet")
    return 3


if __name__ == "__main__":
    sys.exit(main())
