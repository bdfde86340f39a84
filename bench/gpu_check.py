"""``python -m tensorgate.bench.gpu_check``: kept for old instructions; the GPU self-check is ``tensorgate doctor --full``.

The checks live in ``tensorgate.server.doctor`` (an engine check, not a load test); this
module only forwards to it, so bench code that wants the rows can import
``tensorgate.server.doctor.run_doctor``.
"""

from __future__ import annotations

import argparse

from tensorgate.server.doctor import run_doctor, table

__all__ = ["main", "run_doctor"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=4, help="streams / execution contexts to overlap")
    args = parser.parse_args()
    text, status = table(full=True, instances=max(1, args.streams))
    print(text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
