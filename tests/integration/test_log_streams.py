"""The event-sourcing streams API of `weft log --http`: appends with expected
versions and idempotent retries, stream/category/$all reads, server-sent
event subscriptions, the Kafka view of categories (kcat), crash recovery,
bad input. Real clients: python requests, raw sockets for SSE, kcat."""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time

import pytest
import requests

from kafkautil import Log, exchange, failing_writes, frame, kstr
from svcutil import wait_until
from weftutil import SSE


@pytest.fixture
def log(tmp_path):
    lg = Log(tmp_path, http=True)
    yield lg
    if lg.alive():
        lg.stop()


def ev(i, type_="Happened", **data):
    return {"id": str(i), "type": type_, "data": data or {"i": str(i)}}


def append(lg, stream, events, expected=None, timeout=10):
    body = {"events": events}
    if expected is not None:
        body["expected_version"] = expected
    return requests.post(f"{lg.url}/streams/{stream}", json=body, timeout=timeout)


def read(lg, path, **params):
    r = requests.get(f"{lg.url}{path}", params=params, timeout=10)
    return r.status_code, r.json()


def read_all(lg, path="/all"):
    """Every event of /all or /categories/X, following next."""
    out, frm = [], 0
    while True:
        st, d = read(lg, path, **{"from": frm, "limit": 1000})
        assert st == 200, d
        out += d["events"]
        if d["next"] is None:
            return out
        frm = d["next"]


def kcat_consume(lg, topic):
    """(key, headers dict, value) of every record of a topic."""
    r = subprocess.run(["kcat", "-C", "-b", lg.bootstrap, "-t", topic, "-e", "-q",
                        "-f", "%k\\t%h\\t%s\\n"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        k, h, v = line.split("\t", 2)
        hd = {}
        for name in ("weft.stream", "weft.version", "weft.id", "weft.type", "weft.position"):
            m = re.search(re.escape(name) + r"=([^,]*)", h)
            if m:
                hd[name] = m.group(1)
        m = re.search(r"weft\.metadata=(\{.*\})", h)
        if m:
            hd["weft.metadata"] = m.group(1)
        out.append((k, hd, v))
    return out


# ---- appends and reads ----


def test_append_and_read_forward_and_backward(log):
    r = append(log, "order-1", [ev(f"o{i}", n=i) for i in range(5)], "no_stream")
    assert r.status_code == 200, r.text
    assert r.json() == {"stream": "order-1", "first_version": 0, "last_version": 4, "position": 0}
    r = append(log, "order-1", [{"id": "o5", "type": "Shipped", "data": {"n": 5},
                                 "metadata": {"by": "alice"}}], 4)
    assert r.json() == {"stream": "order-1", "first_version": 5, "last_version": 5, "position": 5}

    st, d = read(log, "/streams/order-1")
    assert st == 200
    assert d["version"] == 5 and d["next"] is None
    assert [e["version"] for e in d["events"]] == list(range(6))
    assert [e["position"] for e in d["events"]] == list(range(6))
    e5 = d["events"][5]
    assert e5["stream"] == "order-1" and e5["id"] == "o5" and e5["type"] == "Shipped"
    assert e5["data"] == {"n": 5} and e5["metadata"] == {"by": "alice"}
    assert d["events"][0]["metadata"] is None
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", e5["time"])

    # pages forward
    st, d = read(log, "/streams/order-1", **{"from": 1, "limit": 2})
    assert [e["version"] for e in d["events"]] == [1, 2] and d["next"] == 3
    # backward from the end, then from a version
    st, d = read(log, "/streams/order-1", direction="backward", limit=4)
    assert [e["version"] for e in d["events"]] == [5, 4, 3, 2] and d["next"] == 1
    st, d = read(log, "/streams/order-1", direction="backward", **{"from": 1})
    assert [e["version"] for e in d["events"]] == [1, 0] and d["next"] is None
    # beyond the end
    st, d = read(log, "/streams/order-1", **{"from": 99})
    assert st == 200 and d["events"] == [] and d["next"] is None and d["version"] == 5
    st, d = read(log, "/streams/nothing-here")
    assert st == 404 and "error" in d


def test_expected_versions(log):
    # no_stream: only when the stream does not exist
    assert append(log, "acct-1", [ev("a")], "no_stream").status_code == 200
    r = append(log, "acct-1", [ev("b")], "no_stream")
    assert r.status_code == 409
    assert r.json() == {"error": "wrong expected version", "current_version": 0}
    # stream_exists
    r = append(log, "acct-2", [ev("c")], "stream_exists")
    assert r.status_code == 409 and r.json()["current_version"] == -1
    assert append(log, "acct-1", [ev("d")], "stream_exists").json()["first_version"] == 1
    # exact
    r = append(log, "acct-1", [ev("e")], 0)
    assert r.status_code == 409 and r.json()["current_version"] == 1
    r = append(log, "acct-1", [ev("e")], 5)
    assert r.status_code == 409 and r.json()["current_version"] == 1
    r = append(log, "acct-2", [ev("e2")], 0)
    assert r.status_code == 409 and r.json()["current_version"] == -1
    assert append(log, "acct-1", [ev("e")], 1).json()["first_version"] == 2
    # any (also the default), and EventStore's numeric constants
    assert append(log, "acct-1", [ev("f")], "any").json()["first_version"] == 3
    assert append(log, "acct-1", [ev("g")]).json()["first_version"] == 4
    assert append(log, "acct-3", [ev("h")], -1).json()["first_version"] == 0
    assert append(log, "acct-3", [ev("i")], -4).json()["first_version"] == 1
    assert append(log, "acct-3", [ev("j")], -2).json()["first_version"] == 2
    st, d = read(log, "/streams/acct-1")
    assert [e["id"] for e in d["events"]] == ["a", "d", "e", "f", "g"]
    assert metric_value(log, "weft_log_streams_conflicts_total") == 5


def metric_value(lg, name):
    text = requests.get(f"{lg.url}/metrics", timeout=5).text
    for ln in text.splitlines():
        if ln.startswith(name + " "):
            return float(ln.split()[1])
    raise AssertionError(f"no metric {name}")


def test_idempotent_retry_writes_nothing(log):
    first = append(log, "account-7", [ev("x1"), ev("x2"), ev("x3")], "no_stream").json()
    assert append(log, "account-8", [ev("y1")], "any").status_code == 200
    assert append(log, "account-7", [ev("x4")], 2).status_code == 200
    before = len(read_all(log))
    assert before == 5
    # retried with the same expected version, after other writes: original answer
    for _ in range(3):
        r = append(log, "account-7", [ev("x1"), ev("x2"), ev("x3")], "no_stream")
        assert r.status_code == 200, r.text
        assert r.json() == first
    r = append(log, "account-7", [ev("x4")], 2)
    assert r.json() == {"stream": "account-7", "first_version": 3, "last_version": 3,
                        "position": 4}
    # with any: the recent ids are found
    r = append(log, "account-7", [ev("x2"), ev("x3")], "any")
    assert r.json() == {"stream": "account-7", "first_version": 1, "last_version": 2,
                        "position": 1}
    r = append(log, "account-8", [ev("y1")], "stream_exists")
    assert r.json()["first_version"] == 0 and r.json()["position"] == 3
    assert len(read_all(log)) == before
    assert metric_value(log, "weft_log_streams_events_total") == 5
    assert metric_value(log, "weft_log_streams_idempotent_total") == 6
    # and the Kafka view did not get them twice either
    wait_until(lambda: len(kcat_consume(log, "account")) == 5, timeout=10)
    time.sleep(0.3)
    recs = kcat_consume(log, "account")
    assert len(recs) == 5
    assert sorted(int(h["weft.position"]) for _, h, _ in recs) == [0, 1, 2, 3, 4]


def test_partial_idempotent_match_is_a_conflict(log):
    assert append(log, "cart-1", [ev("p1"), ev("p2")], "no_stream").status_code == 200
    # the first id matches, the second is new
    r = append(log, "cart-1", [ev("p1"), ev("p9")], "no_stream")
    assert r.status_code == 409 and r.json()["current_version"] == 1
    # more events than were written the first time
    r = append(log, "cart-1", [ev("p1"), ev("p2"), ev("p3")], -1)
    assert r.status_code == 409
    # with any: first id found, the rest does not follow it
    r = append(log, "cart-1", [ev("p2"), ev("p7")], "any")
    assert r.status_code == 409
    # a different first id is not a retry: exact version below current -> 409
    r = append(log, "cart-1", [ev("q1")], 0)
    assert r.status_code == 409 and r.json()["current_version"] == 1
    assert len(read_all(log)) == 2


def test_concurrent_appends_with_the_same_expected_version(log):
    assert append(log, "race-1", [ev("seed")], "no_stream").status_code == 200
    n = 24
    barrier = threading.Barrier(n)
    results = [None] * n

    def worker(i):
        s = requests.Session()
        barrier.wait()
        r = s.post(f"{log.url}/streams/race-1",
                   json={"expected_version": 0, "events": [ev(f"w{i}"), ev(f"w{i}b")]},
                   timeout=20)
        results[i] = (r.status_code, r.json())

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    codes = [c for c, _ in results]
    assert codes.count(200) == 1, results
    assert codes.count(409) == n - 1
    win = next(d for c, d in results if c == 200)
    assert win["first_version"] == 1 and win["last_version"] == 2
    assert all(d["current_version"] in (0, 2) for c, d in results if c == 409)
    st, d = read(log, "/streams/race-1")
    assert d["version"] == 2 and len(d["events"]) == 3

    # and with no_stream on a new stream, many rounds
    for rnd in range(5):
        barrier = threading.Barrier(8)
        out = []

        def creator(i, rnd=rnd, barrier=barrier, out=out):
            barrier.wait()
            out.append(append(log, f"new-{rnd}", [ev(f"c{i}")], "no_stream").status_code)

        ts = [threading.Thread(target=creator, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert sorted(out) == [200] + [409] * 7


def test_category_and_all_in_global_order(log):
    plan = [("account-1", "a"), ("order-1", "o"), ("account-2", "b"), ("account-1", "c"),
            ("order-2", "p"), ("account", "d"), ("accounting-1", "e")]
    for stream, i in plan:
        assert append(log, stream, [ev(i), ev(i + "2")]).status_code == 200
    every = read_all(log)
    assert [e["position"] for e in every] == list(range(14))
    assert [e["id"] for e in every][:4] == ["a", "a2", "o", "o2"]
    acc = read_all(log, "/categories/account")
    assert [e["stream"] for e in acc] == ["account-1"] * 2 + ["account-2"] * 2 + \
        ["account-1"] * 2 + ["account"] * 2
    assert [e["position"] for e in acc] == sorted(e["position"] for e in acc)
    assert read_all(log, "/categories/accounting")[0]["stream"] == "accounting-1"
    # paging a category by position
    st, d = read(log, "/categories/account", **{"from": 3, "limit": 3})
    assert [e["position"] for e in d["events"]] == [4, 5, 6] and d["next"] == 7
    st, d = read(log, "/categories/none")
    assert st == 200 and d == {"events": [], "next": None}
    st, d = read(log, "/all", **{"from": 12, "limit": 5})
    assert [e["position"] for e in d["events"]] == [12, 13] and d["next"] is None


# ---- subscriptions ----


def test_subscribe_catch_up_then_live_and_resume(log):
    for i in range(5):
        append(log, "order-1", [ev(f"o{i}")])
    append(log, "cart-1", [ev("c0"), ev("c1"), ev("c2")])
    sub = SSE(log.http_port, "/subscribe/all?from=0")
    assert sub.status == 200 and "text/event-stream" in sub.head
    got = sub.pairs(8)
    assert [i for i, _ in got] == list(range(8))
    assert [d["position"] for _, d in got] == list(range(8))
    assert [d["id"] for _, d in got][-3:] == ["c0", "c1", "c2"]
    # live
    append(log, "order-1", [ev("o5"), ev("o6")])
    got = sub.pairs(2)
    assert [i for i, _ in got] == [8, 9] and got[1][1]["id"] == "o6"
    sub.close()
    # events while disconnected, then resume with Last-Event-ID (wins over from)
    append(log, "cart-1", [ev("c3")])
    sub = SSE(log.http_port, "/subscribe/all?from=0", headers={"Last-Event-ID": "9"})
    append(log, "order-1", [ev("o7")])
    got = sub.pairs(2)
    assert [i for i, _ in got] == [10, 11]
    assert [d["id"] for _, d in got] == ["c3", "o7"]
    sub.close()

    # a category: ids are positions
    sub = SSE(log.http_port, "/subscribe/categories/cart?from=6")
    got = sub.pairs(2)
    assert [i for i, _ in got] == [6, 7]
    assert [d["id"] for _, d in got] == ["c1", "c2"]
    append(log, "cart-2", [ev("x")])
    append(log, "order-9", [ev("y")])
    append(log, "cart-1", [ev("c4")])
    got = sub.pairs(3)
    assert [d["id"] for _, d in got] == ["c3", "x", "c4"]
    sub.close()

    # a stream: ids are versions; a stream that does not exist yet
    sub = SSE(log.http_port, "/subscribe/streams/order-1?from=6")
    got = sub.pairs(2)
    assert [(i, d["version"], d["id"]) for i, d in got] == [(6, 6, "o6"), (7, 7, "o7")]
    sub.close()
    sub = SSE(log.http_port, "/subscribe/streams/later-1")
    append(log, "later-1", [ev("l0"), ev("l1")])
    assert [i for i, _ in sub.pairs(2)] == [0, 1]
    assert metric_value(log, "weft_log_streams_subscribers") == 1
    sub.close()
    wait_until(lambda: metric_value(log, "weft_log_streams_subscribers") == 0, timeout=5)


def test_slow_subscriber_is_paced_by_its_socket(log):
    blob = "x" * 4000
    total = 0
    for a in range(24):  # ~48 MB of events
        r = append(log, f"big-{a % 3}",
                   [{"id": f"e{a}-{i}", "type": "Big", "data": {"b": blob, "i": i}}
                    for i in range(200)])
        assert r.status_code == 200, r.text
        total += 200
    time.sleep(0.5)
    base = log.rss_kib()
    sub = SSE(log.http_port, "/subscribe/all?from=0", rcvbuf=16384)
    assert sub.status == 200
    time.sleep(2)  # the subscriber reads nothing: the server must stop at its high water
    stalled = log.rss_kib()
    time.sleep(1)
    assert log.rss_kib() - stalled < 4096, "memory still growing with a stalled subscriber"
    assert stalled - base < 24 * 1024, f"grew {stalled - base} kB for a 48 MB backlog"
    # then it reads everything, in order, without a gap
    got = sub.pairs(total, timeout=120)
    assert [i for i, _ in got] == list(range(total))
    sub.close()


def test_drain_ends_subscriptions(tmp_path):
    lg = Log(tmp_path, http=True)
    append(lg, "a-1", [ev("1")])
    sub = SSE(lg.http_port, "/subscribe/all")
    assert sub.pairs(1)[0][0] == 0
    lg.stop()
    with pytest.raises((EOFError, OSError)):
        sub.pairs(1, timeout=3)


# ---- the Kafka view ----


def test_kcat_sees_every_account_event_keyed_by_stream(log):
    want = []
    for i in range(6):
        stream = f"account-{i % 3}"
        r = append(log, stream, [{"id": f"k{i}", "type": "Deposited", "data": {"amount": i},
                                  "metadata": {"user": "u"}}, ev(f"k{i}b")])
        assert r.status_code == 200
        want += [(stream, f"k{i}"), (stream, f"k{i}b")]
        append(log, f"order-{i}", [ev(f"o{i}")])
    wait_until(lambda: len(kcat_consume(log, "account")) == 12, timeout=10)
    recs = kcat_consume(log, "account")
    assert [(k, h["weft.id"]) for k, h, _ in recs] == want
    for k, h, v in recs:
        assert h["weft.stream"] == k
        assert h["weft.type"] in ("Deposited", "Happened")
    first = recs[0]
    assert json.loads(first[2]) == {"amount": 0}
    assert json.loads(first[1]["weft.metadata"]) == {"user": "u"}
    cat = read_all(log, "/categories/account")
    assert [int(h["weft.position"]) for _, h, _ in recs] == [e["position"] for e in cat]
    assert [int(h["weft.version"]) for _, h, _ in recs] == [e["version"] for e in cat]
    # the source of truth is hidden from topic listings and closed to producers
    r = subprocess.run(["kcat", "-L", "-b", log.bootstrap, "-J"], capture_output=True,
                       text=True, timeout=30)
    names = {t["topic"] for t in json.loads(r.stdout)["topics"]}
    assert "account" in names and "order" in names and "__weft_streams" not in names
    r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", "__weft_streams"],
                       input="evil\n", capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 or "error" in r.stderr.lower()
    assert len(read_all(log)) == 18
    # but it can be read by name: $all as a Kafka topic
    recs = kcat_consume(log, "__weft_streams")
    assert len(recs) == 18 and recs[0][1]["weft.id"] == "k0"


# ---- crash and restart ----


def test_kill9_during_appends_keeps_every_acknowledged_append(tmp_path):
    lg = Log(tmp_path, http=True)
    acked, stop = [], threading.Event()

    def writer(w):
        s = requests.Session()
        i = 0
        while not stop.is_set():
            stream = f"account-{w}-{i % 4}"
            evs = [ev(f"{w}-{i}-{k}") for k in range(1 + i % 3)]
            try:
                r = s.post(f"{lg.url}/streams/{stream}", json={"events": evs}, timeout=5)
            except requests.RequestException:
                return
            if r.status_code == 200:
                acked.append((stream, [e["id"] for e in evs], r.json()))
            i += 1

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in ts:
        t.start()
    wait_until(lambda: len(acked) >= 150, timeout=60)
    os.kill(lg.pid, signal.SIGKILL)
    lg.proc.wait(10)
    stop.set()
    for t in ts:
        t.join(10)
    lg._err.close()

    lg2 = Log(tmp_path, data=lg.data, http=True, name="log2")
    try:
        for stream, ids, ans in acked:
            st, d = read(lg2, f"/streams/{stream}", **{"from": ans["first_version"],
                                                        "limit": len(ids)})
            assert st == 200, (stream, d)
            assert [e["id"] for e in d["events"]] == ids
            assert [e["version"] for e in d["events"]] == list(
                range(ans["first_version"], ans["last_version"] + 1))
            assert [e["position"] for e in d["events"]] == list(
                range(ans["position"], ans["position"] + len(ids)))
        every = read_all(lg2)
        assert [e["position"] for e in every] == list(range(len(every)))
        # the category topic holds exactly the category's events, again
        cat = read_all(lg2, "/categories/account")
        assert len(cat) == len(every)
        recs = kcat_consume(lg2, "account")
        assert [int(h["weft.position"]) for _, h, _ in recs] == [e["position"] for e in cat]
        # the streams go on from where they were
        some = acked[-1][0]
        st, d = read(lg2, f"/streams/{some}")
        r = append(lg2, some, [ev("after")], d["version"])
        assert r.status_code == 200 and r.json()["first_version"] == d["version"] + 1
    finally:
        lg2.stop()


def test_category_topic_is_rebuilt_at_start(tmp_path):
    lg = Log(tmp_path, http=True)
    for i in range(10):
        append(lg, f"shop-{i % 2}", [ev(f"s{i}"), ev(f"s{i}b")])
        append(lg, "misc", [ev(f"m{i}")])
    wait_until(lambda: len(kcat_consume(lg, "shop")) == 20, timeout=10)
    lg.stop()
    # lose the copy entirely, and the tail of another one
    data = lg.data
    os.unlink(data / "shop.topic")
    shutil.rmtree(data / "shop-0")
    lg2 = Log(tmp_path, data=data, http=True, name="log2")
    try:
        # the copy runs on the worker as it starts, after the listening lines
        wait_until(lambda: "events copied again" in lg2.text(), timeout=10)
        recs = kcat_consume(lg2, "shop")
        assert [h["weft.id"] for _, h, _ in recs] == [
            x for i in range(10) for x in (f"s{i}", f"s{i}b")]
        assert len(kcat_consume(lg2, "misc")) == 10
        # nothing is copied twice on the next start
        lg2.stop()
        lg3 = Log(tmp_path, data=data, http=True, name="log3")
        assert len(kcat_consume(lg3, "shop")) == 20  # answered: the worker has started
        assert "events copied again" not in lg3.text()
        lg3.stop()
    finally:
        if lg2.alive():
            lg2.stop()


def test_failed_category_copy_waits_and_is_retried_in_order(tmp_path):
    """A copy to a category topic that fails while running (its disk full)
    must not leave a hole: the category's later events wait (other
    categories go on), and once writes work again the topic catches up in
    order and copies go on live."""
    flag, env = failing_writes(tmp_path, "/acct-0/")
    lg = Log(tmp_path, http=True, env=env)
    try:
        assert append(lg, "acct-1", [ev("a1")]).status_code == 200
        wait_until(lambda: len(kcat_consume(lg, "acct")) == 1, timeout=10)
        flag.touch()
        assert append(lg, "acct-1", [ev("a2")]).status_code == 200  # the event store is fine
        assert append(lg, "acct-2", [ev("a3"), ev("a3b")]).status_code == 200
        assert append(lg, "shop-1", [ev("s1")]).status_code == 200
        wait_until(lambda: len(kcat_consume(lg, "shop")) == 1, timeout=10)
        wait_until(lambda: "cannot copy events to their category topic" in lg.text(), timeout=10)
        time.sleep(1.5)  # a retry has run, and failed
        assert [h["weft.id"] for _, h, _ in kcat_consume(lg, "acct")] == ["a1"]
        metrics = requests.get(f"{lg.url}/metrics", timeout=10).text
        assert re.search(r"^weft_log_streams_categories_stalled 1$", metrics, re.M), metrics
        flag.unlink()
        wait_until(lambda: len(kcat_consume(lg, "acct")) == 4, timeout=10)
        assert "caught up" in lg.text()
        assert append(lg, "acct-1", [ev("a4")]).status_code == 200
        wait_until(lambda: len(kcat_consume(lg, "acct")) == 5, timeout=10)
        metrics = requests.get(f"{lg.url}/metrics", timeout=10).text
        assert re.search(r"^weft_log_streams_categories_stalled 0$", metrics, re.M)
        recs = kcat_consume(lg, "acct")
        assert [h["weft.id"] for _, h, _ in recs] == ["a1", "a2", "a3", "a3b", "a4"]
        cat = read_all(lg, "/categories/acct")
        assert [int(h["weft.position"]) for _, h, _ in recs] == [e["position"] for e in cat]
    finally:
        lg.stop()


def test_category_topic_deleted_while_running_is_rebuilt_whole(log):
    """A Kafka client deletes a category topic while the log runs: the next
    event of that category recreates it with every earlier event first, in
    order, instead of starting it at that event."""
    for i in range(3):
        assert append(log, f"shop-{i}", [ev(f"s{i}")]).status_code == 200
    wait_until(lambda: len(kcat_consume(log, "shop")) == 3, timeout=10)
    body = struct.pack(">i", 1) + kstr("shop") + struct.pack(">i", 5000)
    resp, closed = exchange(log.port, frame(20, 0, 9, body))
    assert not closed
    assert struct.unpack(">h", resp[-2:]) == (0,), "DeleteTopics must succeed"
    assert append(log, "shop-9", [ev("s9")]).status_code == 200
    wait_until(lambda: len(kcat_consume(log, "shop")) == 4, timeout=10)
    recs = kcat_consume(log, "shop")
    assert [h["weft.id"] for _, h, _ in recs] == ["s0", "s1", "s2", "s9"]
    cat = read_all(log, "/categories/shop")
    assert [int(h["weft.position"]) for _, h, _ in recs] == [e["position"] for e in cat]


def test_foreign_weft_position_header_at_int64_max(tmp_path):
    """A Kafka client may write a category topic; a record of its own whose
    weft.position header is 2^63-1 must not break the next start (the
    re-copy's lower bound was that + 1, a signed overflow)."""
    lg = Log(tmp_path, http=True)
    append(lg, "shop-1", [ev("s1")])
    wait_until(lambda: len(kcat_consume(lg, "shop")) == 1, timeout=10)
    r = subprocess.run(["kcat", "-P", "-b", lg.bootstrap, "-t", "shop",
                        "-H", "weft.position=9223372036854775807"],
                       input="foreign\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lg.stop()
    lg2 = Log(tmp_path, data=lg.data, http=True, name="log2")
    try:
        assert append(lg2, "shop-1", [ev("s2")]).status_code == 200
        wait_until(lambda: len(kcat_consume(lg2, "shop")) == 3, timeout=10)
        assert lg2.alive()
    finally:
        lg2.stop()


# ---- bad input ----


@pytest.mark.parametrize("body,why", [
    (b"{not json", "invalid JSON"),
    (b"[]", "expected"),
    (b'{"events": [], "expected_version": "any"}', "1 to 1000"),
    (b'{"events": [{"id": "a", "type": "t", "data": 1}], "extra": 1}', "unknown field"),
    (b'{"events": [{"type": "t", "data": 1}]}', "id is required"),
    (b'{"events": [{"id": "", "type": "t", "data": 1}]}', "id is required"),
    (b'{"events": [{"id": "a b", "type": "t", "data": 1}]}', "id is required"),
    (b'{"events": [{"id": 5, "type": "t", "data": 1}]}', "id is required"),
    (b'{"events": [{"id": "a", "data": 1}]}', "type is required"),
    (b'{"events": [{"id": "a", "type": "t"}]}', "data is required"),
    (b'{"events": [{"id": "a", "type": "t", "data": 1, "color": 1}]}', "unknown field"),
    (b'{"events": [{"id": "a", "type": "t", "data": 1}, {"id": "a", "type": "t", "data": 2}]}',
     "same id"),
    (b'{"events": [1]}', "object"),
    (b'{"events": {"id": "a"}}', "1 to 1000"),
    (b'{"expected_version": "sometimes", "events": [{"id": "a", "type": "t", "data": 1}]}',
     "expected_version"),
    (b'{"expected_version": -3, "events": [{"id": "a", "type": "t", "data": 1}]}',
     "expected_version"),
    (b'{"expected_version": 1.5, "events": [{"id": "a", "type": "t", "data": 1}]}',
     "expected_version"),
    (b'{"events": [{"id": "a", "type": "t", "data": 1}], "events": []}', "invalid JSON"),
    (b'{"events": [{"id": "a", "type": "t", "data": "nul\\u0000here"}]}', "invalid JSON"),
])
def test_bad_appends_are_400_with_a_json_error(log, body, why):
    r = requests.post(f"{log.url}/streams/s-1", data=body, timeout=5)
    assert r.status_code == 400, r.text
    assert why in r.json()["error"]


def test_bad_input_limits_and_names(log):
    many = [ev(f"m{i}") for i in range(1001)]
    r = append(log, "s-1", many)
    assert r.status_code == 400 and "1 to 1000" in r.json()["error"]
    r = append(log, "s-1", [{"id": "big", "type": "t", "data": "x" * 300000}])
    assert r.status_code == 400 and "256 KiB" in r.json()["error"]
    r = append(log, "s-1", [{"id": f"b{i}", "type": "t", "data": "x" * 200000} for i in range(5)])
    assert r.status_code in (400, 413), r.text
    assert "error" in r.json()
    r = append(log, "s-1", [{"id": "i" * 101, "type": "t", "data": 1}])
    assert r.status_code == 400
    for bad in ("a%20b", "a*b", "x" * 201, "%zz", "a%2Fb", "a/b"):
        r = requests.post(f"{log.url}/streams/{bad}", json={"events": [ev("1")]}, timeout=5)
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert "error" in r.json()
        r = requests.get(f"{log.url}/streams/{bad}", timeout=5)
        assert r.status_code in (400, 404) and "error" in r.json()
    r = requests.get(f"{log.url}/categories/a*b", timeout=5)
    assert r.status_code == 400
    r = requests.get(f"{log.url}/subscribe/streams/a*b", timeout=5)
    assert r.status_code == 400
    r = requests.get(f"{log.url}/subscribe/nothing", timeout=5)
    assert r.status_code == 404
    # a percent-encoded ':' is the same name
    assert append(log, "ns:a-1", [ev("p")]).status_code == 200
    assert read(log, "/streams/ns%3Aa-1")[0] == 200
    assert append(log, "s-1", [ev("ok")]).status_code == 200
    for q in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"from": -1}, {"from": "1e3"},
              {"direction": "sideways"}):
        st, d = read(log, "/streams/s-1", **q)
        assert st == 400 and "error" in d, q
        st, d = read(log, "/all", **q) if "direction" not in q else (400, {"error": ""})
        assert st == 400 and "error" in d, q
    r = requests.get(f"{log.url}/subscribe/all", headers={"Last-Event-ID": "x"}, timeout=5)
    assert r.status_code == 400
    r = requests.delete(f"{log.url}/streams/s-1", timeout=5)
    assert r.status_code == 405
    # still serving
    st, d = read(log, "/streams/s-1")
    assert st == 200 and [e["id"] for e in d["events"]] == ["ok"]


def test_refused_append_does_not_count_a_stream(log):
    """An append refused after its stream was looked up (too large once
    built: 400) leaves no stream behind: weft_log_streams counts streams
    with events, as it does after a restart."""
    assert append(log, "real-1", [ev("r")]).status_code == 200
    big = [{"id": f"b{i}", "type": "t", "data": "x" * 200000} for i in range(4)]
    big.append({"id": "b4", "type": "t", "data": "x" * 190000})  # > 960 KiB, < max_body
    r = append(log, "huge-1", big)
    assert r.status_code == 400 and "too large" in r.json()["error"], r.text[:200]
    assert read(log, "/streams/huge-1")[0] == 404
    assert metric_value(log, "weft_log_streams") == 1
    assert append(log, "huge-1", [ev("small")]).status_code == 200
    assert metric_value(log, "weft_log_streams") == 2


def test_numbers_past_int64_are_400(log):
    """from= and Last-Event-ID beyond 2^63-1 are refused, not wrapped around
    (a wrapped Last-Event-ID gave a stream subscription a negative version
    to index with)."""
    assert append(log, "n-1", [ev("a"), ev("b")]).status_code == 200
    for big in ("9223372036854775808", "9999999999999999999"):
        for path in ("/all", "/streams/n-1", "/categories/n"):
            st, d = read(log, path, **{"from": big})
            assert st == 400 and "error" in d, (path, big)
        for path in ("/subscribe/all", "/subscribe/streams/n-1", "/subscribe/categories/n"):
            sub = SSE(log.http_port, path, headers={"Last-Event-ID": big})
            assert sub.status == 400, (path, big)
            sub.close()
            sub = SSE(log.http_port, f"{path}?from={big}")
            assert sub.status == 400, (path, big)
            sub.close()
    # the largest number still parses
    st, d = read(log, "/all", **{"from": "9223372036854775807"})
    assert st == 200 and d == {"events": [], "next": None}
    assert log.alive()
    st, d = read(log, "/streams/n-1")
    assert st == 200 and [e["id"] for e in d["events"]] == ["a", "b"]


def test_health_ready_metrics_on_the_streams_listener(log):
    assert requests.get(f"{log.url}/health", timeout=5).status_code == 200
    assert requests.get(f"{log.url}/ready", timeout=5).json() == {"ready": True}
    append(log, "m-1", [ev("1"), ev("2")])
    text = requests.get(f"{log.url}/metrics", timeout=5).text
    for name in ("weft_log_requests_total", "weft_log_streams_appends_total",
                 "weft_log_streams_events_total", "weft_log_streams_subscribers"):
        assert name in text
    assert metric_value(log, "weft_log_streams_events_total") == 2
    assert metric_value(log, "weft_log_streams") == 1


def test_request_duration_histograms(log):
    """weft_log_request_duration_seconds{api=produce|fetch}: one observation per
    Kafka produce/fetch request, cumulative buckets, +Inf == count."""
    def hist(api):
        text = requests.get(f"{log.url}/metrics", timeout=5).text
        pre = "weft_log_request_duration_seconds"
        buckets = [(m.group(1), float(m.group(2))) for m in re.finditer(
            pre + r'_bucket\{api="' + api + r'",le="([^"]+)"\} (\S+)', text)]
        count = float(re.search(pre + r'_count\{api="' + api + r'"\} (\S+)', text).group(1))
        total = float(re.search(pre + r'_sum\{api="' + api + r'"\} (\S+)', text).group(1))
        return buckets, count, total

    _, before, _ = hist("produce")
    for i in range(5):  # one produce request each (acks=all: includes the fsync)
        r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", "dur", "-X", "acks=all"],
                           input=f"m{i}\n", capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    buckets, count, total = hist("produce")
    assert count == before + 5
    assert 0 < total < 5 * 10
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1] == ("+Inf", count)
    assert float(buckets[0][0]) == 0.00005  # fine enough to see one fsync
    assert len(kcat_consume(log, "dur")) == 5
    assert hist("fetch")[1] >= 1


@pytest.mark.parametrize("text", [
    "http:\n  listen: 127.0.0.1:0\n  max_body: 2MiB\n",
    # docs/eventlog.md: `http: HOST:PORT` as well as `http: {listen: ...}`;
    # the scalar form was rejected as "http: expected a mapping"
    "http: 127.0.0.1:0\n",
])
def test_config_file_http_key(tmp_path, text):
    cfg = tmp_path / "log.yaml"
    cfg.write_text(text)
    lg = Log(tmp_path, extra=["-c", cfg])
    try:
        # the streams line may follow the Kafka one the start-up wait saw
        m = wait_until(lambda: re.search(r"service=streams addr=\S+:(\d+)", lg.text()),
                       what="streams listening line")
        port = int(m.group(1))
        r = requests.post(f"http://127.0.0.1:{port}/streams/c-1",
                          json={"events": [ev("1")]}, timeout=5)
        assert r.status_code == 200
    finally:
        lg.stop()
