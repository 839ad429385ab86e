from hypothesis import given
from hypothesis import strategies as st

from p2pserver.storage import Store

from .conftest import add_dummy_events


@st.composite
def auth_dags(draw: st.DrawFn) -> tuple[list[list[int]], list[set[int]]]:
    """Random auth DAGs in nid order, and state sets over them."""
    n = draw(st.integers(1, 25))
    edges = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)
    ]
    sets = draw(st.lists(st.sets(st.integers(0, n - 1), max_size=6), min_size=1, max_size=4))
    return edges, sets


def _store_dag(edges: list[list[int]]) -> tuple[Store, list[int]]:
    store = Store.open()
    with store.transaction():
        add_dummy_events(store, [f"$e{i}" for i in range(len(edges))])
        nids = list(store.event_nids(f"$e{i}" for i in range(len(edges))).values())
        store.db.executemany(
            "INSERT INTO event_auth (event_nid, auth_nid) VALUES (?, ?)",
            [(nids[i], nids[a]) for i, auths in enumerate(edges) for a in auths],
        )
    return store, nids


def _ancestors(edges: list[list[int]], start: set[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(start)
    while todo:
        for a in edges[todo.pop()]:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


@given(auth_dags())
def test_difference_matches_brute_force(dag: tuple[list[list[int]], list[set[int]]]) -> None:
    edges, sets = dag
    store, nids = _store_dag(edges)
    chains = [_ancestors(edges, s) for s in sets]  # a set's own events only if reached
    expected = set().union(*chains) - set.intersection(*chains)
    got = store.auth_chains.difference([{nids[i] for i in s} for s in sets])
    assert got == {nids[i] for i in expected}
    # and through the EventSource interface, by event ID
    state_sets = [{f"$e{i}" for i in s} for s in sets]
    assert store.auth_chain_difference(state_sets) == {f"$e{i}" for i in expected}
    store.close()


@given(auth_dags())
def test_auth_chain_matches_brute_force(dag: tuple[list[list[int]], list[set[int]]]) -> None:
    edges, sets = dag
    store, nids = _store_dag(edges)
    start = sets[0]
    assert store.auth_chain_ids(f"$e{i}" for i in start) == {
        f"$e{i}" for i in _ancestors(edges, start)
    }
    store.close()


def test_shared_history_is_not_walked() -> None:
    # a long common chain under two differing tips: the walk stops early
    edges = [[]] + [[i - 1] for i in range(1, 2000)] + [[1999], [1999]]
    store, nids = _store_dag(edges)
    queried: list[int] = []
    original = store.auth_chains.auth_edges

    def counting(nids_: object) -> dict[int, tuple[int, ...]]:
        result = original(nids_)  # type: ignore[arg-type]
        queried.extend(result)
        return result

    store.auth_chains.auth_edges = counting  # type: ignore[method-assign]
    assert store.auth_chains.difference([{nids[2000]}, {nids[2001]}]) == set()
    assert store.auth_chains.difference([{nids[2000]}, {nids[1999]}]) == {nids[1999]}
    assert len(set(queried)) < 10
    store.close()


def _on_paths(edges: list[list[int]], targets: set[int]) -> set[int]:
    """Brute force: events on an auth path between two targets, plus the targets."""
    result = set(targets)
    for x in range(len(edges)):
        below = _ancestors(edges, {x})
        above_x = any(x in _ancestors(edges, {t}) or x == t for t in targets)
        if above_x and below & targets:
            result.add(x)
    return result


@given(auth_dags())
def test_conflicted_subgraph_matches_brute_force(
    dag: tuple[list[list[int]], list[set[int]]],
) -> None:
    edges, sets = dag
    store, nids = _store_dag(edges)
    conflicted = set().union(*sets)
    expected = _on_paths(edges, conflicted)
    assert store.conflicted_state_subgraph({f"$e{i}" for i in conflicted}) == {
        f"$e{i}" for i in expected
    }
    store.close()
