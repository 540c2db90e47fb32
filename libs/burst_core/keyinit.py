"""The compose cluster's one-shot key service: make the master key on the first ``up``.

``python -m burst_core.keyinit --home DIR --webhook-keys FILE`` makes ``DIR/secrets.key``
(mode 0600) unless it is there (a named volume mounted into the gateway only), and writes
the derived webhook-sealing keys of that ring to ``FILE`` (the volume billing reads): the
master key never reaches billing. It prints key ids only, never a key, and exits 0 when
the keys are in place, so later ``up``s keep the same key.

``--new-key`` puts a fresh master key first in the ring (the older ones stay after it), for
a rotation: ``docker compose run --rm keyinit ... --new-key``, then
``burst secret rotate-key --rewrap-only`` re-wraps everything under it (the gateway reads
its ring again, and writes billing's webhook keys).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from burst_core import sealing
from burst_core.secrets import KeyRing, KeyRingError, add_master_key, write_webhook_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burst_core.keyinit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, type=Path,
                        help="the gateway's key directory (secrets.key)")
    parser.add_argument("--webhook-keys", required=True, type=Path,
                        help="where billing's derived webhook keys go")
    parser.add_argument("--new-key", action="store_true",
                        help="add a fresh master key first in the ring (a rotation)")
    args = parser.parse_args(argv)
    home: Path = args.home
    if home.exists() and not home.is_dir():
        print(f"keyinit: --home {home} is not a directory", file=sys.stderr)
        return 2
    made = not sealing.key_path(home).exists()
    try:
        sealing.load_or_create_key(home)
        if args.new_key and not made:
            add_master_key(home)
        ring = KeyRing.load(home, create=False)
        write_webhook_keys(ring, args.webhook_keys)
    except (OSError, KeyRingError) as e:
        print(f"keyinit: {e}", file=sys.stderr)
        return 1
    what = "made" if made else "added" if args.new_key else "kept"
    print(f"keyinit: master key {ring.newest.kid} {what} in {sealing.key_path(home)} "
          f"({len(ring.keys)} in the ring); webhook keys written to {args.webhook_keys}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
