from hypothesis import given
from hypothesis import strategies as st

from p2pserver.storage import Store
from p2pserver.storage.state_groups import apply_delta, diff_states

from .conftest import add_dummy_events

EVENTS = [f"$e{i}" for i in range(40)]
KEYS = [("m.room.member", f"@u{i}:x") for i in range(12)] + [("m.room.topic", "")]


def test_delta_chain_is_compact_and_loads_back(store: Store) -> None:
    members = 5000
    ids = [f"$m{i}" for i in range(members)] + [f"$t{i}" for i in range(300)]
    with store.transaction():
        add_dummy_events(store, ids)
        state = {("m.room.member", f"@u{i}:x"): f"$m{i}" for i in range(members)}
        group = store.state_groups.create("!room:x", state)
        groups = [group]
        for i in range(300):
            group = store.state_groups.create_delta(
                "!room:x", group, {("m.room.topic", ""): f"$t{i}"}
            )
            groups.append(group)
    rows = store.table_rows()["state_group_entries"]
    # one snapshot, then about one row per change: nowhere near 5,000 per event
    assert rows < members + 2 * 300
    store.clear_caches()
    final = store.state_groups.load(groups[-1])
    assert final[("m.room.topic", "")] == "$t299"
    assert len(final) == members + 1
    assert store.state_groups.load(groups[1])[("m.room.topic", "")] == "$t0"
    assert ("m.room.topic", "") not in store.state_groups.load(groups[0])


def test_snapshot_once_chain_outgrows_state(store: Store) -> None:
    with store.transaction():
        add_dummy_events(store, EVENTS)
        group = store.state_groups.create("!room:x", {KEYS[0]: EVENTS[0]})
        for i in range(1, 200):
            group = store.state_groups.create_delta("!room:x", group, {KEYS[i % 3]: EVENTS[i % 40]})
    snapshots = store.db.query("SELECT COUNT(*) FROM state_groups WHERE prev_group IS NULL")[0][0]
    assert snapshots > 1  # tiny state: chains are cut short
    hops = store.db.query("SELECT MAX(hops) FROM state_groups")[0][0]
    assert hops <= 50


def test_equal_state_reuses_group(store: Store) -> None:
    with store.transaction():
        add_dummy_events(store, EVENTS)
        a = store.state_groups.create("!room:x", {KEYS[0]: EVENTS[0], KEYS[1]: EVENTS[1]})
        b = store.state_groups.create("!room:x", {KEYS[0]: EVENTS[0], KEYS[1]: EVENTS[1]}, [a])
        c = store.state_groups.create_delta("!room:x", a, {KEYS[0]: EVENTS[0]})
    assert a == b == c


@given(
    st.lists(
        st.tuples(
            st.integers(0, 100),  # base: index into the groups made so far
            st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), st.sampled_from(EVENTS))),
        ),
        max_size=30,
    )
)
def test_groups_load_what_was_stored(steps: list) -> None:
    store = Store.open()
    with store.transaction():
        add_dummy_events(store, EVENTS)
        model = [{}]
        groups = [store.state_groups.create("!room:x", {})]
        for base_index, delta in steps:
            base = base_index % len(groups)
            new_state = apply_delta(model[base], delta)
            if base_index % 2:
                group = store.state_groups.create_delta("!room:x", groups[base], delta)
            else:
                group = store.state_groups.create(
                    "!room:x", new_state, groups[-3:] + [groups[base]]
                )
            model.append(new_state)
            groups.append(group)
    store.clear_caches()
    for group, state in zip(groups, model, strict=True):
        assert dict(store.state_groups.load(group)) == state
    # and with warm caches, loaded parents first
    for group, state in zip(groups, model, strict=True):
        assert dict(store.state_groups.load(group)) == state
    store.close()


def test_diff_and_apply_are_inverse() -> None:
    old = {KEYS[0]: "$a", KEYS[1]: "$b"}
    new = {KEYS[1]: "$c", KEYS[2]: "$d"}
    assert apply_delta(old, diff_states(old, new)) == new
