"""The cache slots' bookkeeping (engine.kvcache.SlotTable): matching a prompt against
every slot in one comparison gives what one longest-common-prefix call per slot gives."""

from __future__ import annotations

import random

import numpy as np

from engine.kvcache import SlotTable, lcp


def test_slot_matches_equal_one_lcp_per_slot() -> None:
    rng = random.Random(0)
    grew = False
    for _ in range(150):
        table = SlotTable(rng.randint(1, 12))
        base = [rng.randrange(50) for _ in range(rng.randint(0, 700))]
        for _ in range(30):
            n = rng.randint(0, 700)
            cut = rng.randint(0, min(n, len(base)))  # shares a random part of a common line
            prefix = np.asarray(base[:cut] + [rng.randrange(50) for _ in range(n - cut)], dtype=np.int64)
            taken = set(rng.sample(range(table.n_slots), rng.randint(0, table.n_slots - 1)))
            free = [s for s in range(table.n_slots) if s not in taken]
            assert table.matches(prefix, free) == [lcp(table.ids[s], prefix) for s in free]
            plan = table.plan(prefix, taken)
            assert plan.slot in free and 0 <= plan.reuse < max(1, len(prefix))
            if rng.random() < 0.8:
                table.commit(plan.slot, prefix)
                grew |= len(prefix) > 256  # the matrix widened past its first 256 columns
            else:
                table.forget(plan.slot)
    assert grew
