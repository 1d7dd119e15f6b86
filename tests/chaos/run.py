"""One command for the chaos tier: ``.venv/bin/python -m tests.chaos.run [options]``.

Same as ``.venv/bin/python -m pytest tests/chaos -m chaos -s`` with the options turned into
the CHAOS_* variables the test reads (unset ones keep their defaults):
--faults (CHAOS_FAULTS, 1000), --seconds (CHAOS_SECONDS, 300), --seed (CHAOS_SEED, random),
--store-mb (CHAOS_STORE_MB, 512), --warmup (CHAOS_WARMUP, 30).
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest

OPTIONS = ("faults", "seconds", "seed", "store-mb", "warmup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__)
    for option in OPTIONS:
        parser.add_argument(f"--{option}", type=int)
    args, rest = parser.parse_known_args(argv)
    for option in OPTIONS:
        value = getattr(args, option.replace("-", "_"))
        if value is not None:
            os.environ[f"CHAOS_{option.replace('-', '_').upper()}"] = str(value)
    here = os.path.dirname(os.path.abspath(__file__))
    return int(pytest.main([here, "-m", "chaos", "-s", "-p", "no:cacheprovider", *rest]))


if __name__ == "__main__":
    sys.exit(main())
