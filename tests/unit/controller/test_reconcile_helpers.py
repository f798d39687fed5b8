"""The controller's pure helpers: the status merge patch and lenient status parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from phasegate.controller.reconcile import merge_patch, parse_status

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


def apply_merge_patch(target, patch):
    """RFC 7386, to check merge_patch against."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge_patch(out.get(k), v)
    return out


@given(
    st.dictionaries(st.text(max_size=3), json_values, max_size=4),
    st.dictionaries(st.text(max_size=3), json_values, max_size=4),
)
def test_merge_patch_turns_old_into_new(old, new):
    def no_nulls(x):
        if isinstance(x, dict):
            return {k: no_nulls(v) for k, v in x.items() if v is not None}
        return x
    old, new = no_nulls(old), no_nulls(new)
    assert apply_merge_patch(old, merge_patch(old, new)) == new


def test_removed_breaker_is_nulled():
    assert merge_patch({"breakers": {"a": {"state": "Tripped"}}}, {"breakers": {}}) == {"breakers": {"a": None}}


def test_status_fields_written_by_others_are_ignored():
    st = parse_status({"phase": "paper", "state": "Progressing", "kopf": {"progress": {}}, "someoneElse": 1})
    assert st.phase == "paper"
