"""Crash-test child: write forever with ``sync="always"``, announcing each acknowledgement.

Usage: ``python crash_child.py DATA_DIR RUN SEED``

Once the database is open it prints ``ready``, then one line per acknowledged write,
flushed at once so that the parent (``test_crash_process.py``) knows exactly what was
acknowledged when it kills this process:

``F <id> <n>``
    a single fact whose value is ``{"run": RUN, "n": n, "pad": PAD}``
``B <batch-id> <id0> … <id4>``
    a ``write_many`` of five facts whose values are
    ``{"run": RUN, "batch": <batch-id>, "i": i, "pad": PAD}``
"""

from __future__ import annotations

import random
import sys

import kilndb

#: Small data files, so that kills also land in rotations and hint writes.
MAX_FILE_SIZE = 16 * 1024
BATCH_SIZE = 5
PAD = "p" * 100


def main() -> None:
    data_dir, run, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    out = sys.stdout
    db = kilndb.open(data_dir, sync="always", max_file_size=MAX_FILE_SIZE)
    out.write("ready\n")
    out.flush()
    store = db.store("crash")
    n = 0
    while True:
        n += 1
        if rng.random() < 0.3:
            batch = f"{run}-{n}"
            facts = db.write_many(
                kilndb.Write(
                    "crash",
                    f"b{rng.randrange(40)}",
                    {"run": run, "batch": batch, "i": i, "pad": PAD},
                )
                for i in range(BATCH_SIZE)
            )
            out.write(f"B {batch} {' '.join(fact.id for fact in facts)}\n")
        else:
            fact = store.write(f"k{rng.randrange(40)}", {"run": run, "n": n, "pad": PAD})
            out.write(f"F {fact.id} {n}\n")
        out.flush()


if __name__ == "__main__":
    main()
