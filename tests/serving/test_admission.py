"""Admission: the 429 rule, least-loaded placement, and places given back exactly once."""

from __future__ import annotations

from forgeflow.serving.admission import Admission, limit
from forgeflow.serving.placement import Instance

KEY = ("ep", "blue")
SETTINGS = {"max_concurrent_requests_per_instance": 2}


def _instances(n: int) -> list[Instance]:
    return [Instance(index=i, url=f"http://127.0.0.1:{9000 + i}", ready=True) for i in range(n)]


def test_a_deployment_admits_twice_its_concurrency_per_ready_instance():
    admission = Admission()
    # settings stored without the field take the default: what the transformers runtime decodes in one batch
    assert limit(SETTINGS, 3) == 12 and limit({}, 1) == 2 * 8
    tickets = [admission.admit(KEY, SETTINGS, 1) for _ in range(4)]
    assert all(tickets) and admission.pending(KEY) == 4
    assert admission.admit(KEY, SETTINGS, 1) is None  # the 5th: 429
    assert admission.admit(KEY, SETTINGS, 0) is None  # no ready instance admits nothing
    tickets[0].release()
    assert admission.admit(KEY, SETTINGS, 1) is not None


def test_requests_go_to_the_least_loaded_instance_and_release_once():
    admission = Admission()
    pool = _instances(2)
    first = admission.admit(KEY, SETTINGS, 2)
    second = admission.admit(KEY, SETTINGS, 2)
    a, b = first.place(pool), second.place(pool)
    assert a is not b and admission.in_flight(a) == admission.in_flight(b) == 1
    moved = first.place([b])  # its instance was unreachable: the request moves, its old place is given back
    assert moved is b and admission.in_flight(a) == 0 and admission.in_flight(b) == 2
    for _ in range(3):
        first.release()
    second.release()
    assert admission.in_flight(b) == 0 and admission.pending(KEY) == 0
    assert admission.all_pending() == {KEY: 0}  # the gauge keeps showing the deployment


def test_a_ticket_never_placed_gives_back_its_pending_place():
    admission = Admission()
    ticket = admission.admit(KEY, SETTINGS, 1)
    ticket.release()
    ticket.release()
    assert admission.pending(KEY) == 0


def test_a_ticket_unplaced_from_a_dead_instance_stays_pending_and_counts_on_no_instance():
    admission = Admission()
    pool = _instances(1)
    ticket = admission.admit(KEY, SETTINGS, 1)
    dead = ticket.place(pool)
    ticket.unplace()  # it waits for a new instance: the dead one's drain must not wait for it
    assert admission.in_flight(dead) == 0 and admission.pending(KEY) == 1
    fresh = ticket.place(_instances(2)[1:])
    assert admission.in_flight(fresh) == 1
    ticket.release()
    ticket.unplace()
    assert admission.in_flight(fresh) == 0 and admission.pending(KEY) == 0


def test_what_a_server_publishes_is_what_the_leader_adds_up():
    """A follower's snapshot (pending and last request per deployment, in flight per instance address) read by the
    leader: another server's requests count, and a server that had one lately counts at least one."""
    import json
    import time

    follower, leader = Admission(), Admission()
    ticket = follower.admit(KEY, SETTINGS, 1)
    ticket.place(_instances(1))
    busy = json.loads(json.dumps(follower.snapshot()))  # as it travels through the servers table
    assert busy["in_flight"] == {"http://127.0.0.1:9000": 1}
    ticket.release()
    idle = json.loads(json.dumps(follower.snapshot()))
    assert leader.others_in_flight("http://127.0.0.1:9000") is None  # no other server: drains need not wait
    leader.set_others([busy, idle])
    assert leader.others_in_flight("http://127.0.0.1:9000") == 1
    assert leader.others_pending(KEY, since=time.time() - 5) == 2  # one pending, one had a request lately
    assert leader.others_pending(KEY, since=time.time() + 5) == 1  # only the pending one
    assert leader.others_pending(("ep", "green"), since=0) == 0
