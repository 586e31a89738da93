"""Hypothesis strategies shared by the test packages."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

#: Plain JSON values as KilnDB stores them: 64-bit integers, finite floats, any text.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
