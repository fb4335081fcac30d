"""The seen-window memo answers exactly as a walk of the lists would, however states branch or are decoded anew."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from esper.projections.reducers import _SeenSets

# Each step: which earlier list to grow (a branch when not the newest), the id to add, and whether to use a JSON
# copy of that list instead (as a store hands back).
steps = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.booleans()), max_size=120)


@settings(max_examples=60, deadline=None)
@given(steps, st.integers(1, 24))
def test_holds_and_append_match_plain_lists(plan: list[tuple[int, int, bool]], window: int) -> None:
    memo = _SeenSets(capacity=4)  # small, so that entries are evicted as well
    lists: list[list[str]] = [[]]
    for pick, n, copy in plan:
        ids = lists[pick % len(lists)]
        ids = json.loads(json.dumps(ids)) if copy else ids
        eid = f"e{n}"
        assert memo.holds(ids, eid) == (eid in ids)
        if eid not in ids:
            before = list(ids)
            grown = memo.append(ids, eid, window)
            assert ids == before  # the list passed in is never changed
            assert grown == [*before, eid][-max(window, 1) :]
            lists.append(grown)
    for ids in lists:
        for n in range(41):
            assert memo.holds(ids, f"e{n}") == (f"e{n}" in ids)
