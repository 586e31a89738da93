"""One lease contender, run as its own process by ``test_lease_contention``.

Usage: python -m tests.server.lease_worker URL NAME SECONDS. Prints one JSON line: the
leases it held (token, when it got it, when it stopped relying on it) and its fenced
writes.
"""

from __future__ import annotations

import json
import sys
import time

import kilndb


def main(url: str, name: str, seconds: float) -> None:
    held: list[dict[str, float]] = []
    refused = 0
    with kilndb.connect(url) as db:
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                lease = db.acquire_lease("leader", name, 0.5)
            except kilndb.LeaseHeldError:
                time.sleep(0.002)
                continue
            acquired = time.time()
            try:
                for _ in range(3):
                    db.store("work").write(
                        "log", {"holder": name, "token": lease.token}, fence=lease
                    )
            except kilndb.LeaseLostError:
                refused += 1
            until = min(time.time(), lease.expires_at)
            db.release_lease(lease)
            held.append({"token": lease.token, "acquired": acquired, "until": until})
    print(json.dumps({"name": name, "held": held, "refused": refused}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
