"""weft/events.h through the accounts example: event-sourcing commands
from several processes race on one stream (optimistic concurrency, retry
on conflict, exactly-once deposits), and a consumer-group projection built
from the Kafka category topic with the SDK's librdkafka consumer."""
import json
import socket
import struct
import subprocess
import threading

from kafkautil import Log, _recv_exact, kstr
from svcutil import BIN_DIR, get_json

ACCOUNTS = str(BIN_DIR / "weft-example-accounts")


def test_concurrent_commands_and_a_projection(tmp_path):
    log = Log(tmp_path, http=True)
    try:
        procs = [subprocess.Popen([ACCOUNTS, "--log", log.url, "deposit", "7", "5", "40"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        results = []
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        assert sum(r["ok"] for r in results) == 120
        # 48 commands in flight on one stream: conflicts happened and were retried
        assert sum(r["attempts"] for r in results) > 120
        st, d = get_json(log.http_port, "/streams/account-7?from=0&limit=1000")
        assert st == 200 and d["version"] == 119 and len(d["events"]) == 120
        assert sum(e["data"]["amount"] for e in d["events"]) == 600
        # an overdraft is refused by the decision, nothing appended
        r = subprocess.run([ACCOUNTS, "--log", log.url, "deposit", "7", "-1000", "1"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert get_json(log.http_port, "/streams/account-7?from=119")[1]["version"] == 119
        # withdraw within the balance
        r = subprocess.run([ACCOUNTS, "--log", log.url, "deposit", "7", "-100", "2"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # the read side: a consumer group over the Kafka topic `account`
        r = subprocess.run([ACCOUNTS, "--brokers", log.bootstrap, "project", "proj", "6"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        proj = json.loads(r.stdout.strip().splitlines()[-1])
        assert proj["events"] == 122 and proj["balances"] == {"account-7": 400}
    finally:
        log.stop()


ES_PROBE = str(BIN_DIR / "weft-test-es-probe")


def es_probe(log, stream, mode):
    r = subprocess.run([ES_PROBE, log.url, stream, mode], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_decide_returning_an_object_is_refused_not_reported_done(tmp_path):
    # a single event object instead of an array of them: EINVAL, not
    # "nothing to append" (err 0) with the event silently dropped
    log = Log(tmp_path, http=True)
    try:
        res = es_probe(log, "probe-1", "object")
        assert res["err"] == -2 and "array" in res["reason"], res
        assert get_json(log.http_port, "/streams/probe-1")[0] == 404
    finally:
        log.stop()


def test_done_may_free_the_event_store(tmp_path):
    log = Log(tmp_path, http=True)
    try:
        res = es_probe(log, "probe-2", "free")
        assert res["err"] == 0 and res["version"] == 0, res
    finally:
        log.stop()


CONSUMER_PROBE = str(BIN_DIR / "weft-test-consumer-probe")


class FencingBroker:
    """A scripted one-node Kafka broker on raw sockets that answers every
    JoinGroup with FENCED_INSTANCE_ID (82): what a real broker answers a
    static member (group.instance.id) that another process with the same
    instance id has replaced. librdkafka makes that a fatal error. (weft
    log does not implement static membership, so it cannot fence.)"""

    # ApiVersions answer: (key, min, max); JoinGroup v5 carries group.instance.id
    APIS = [(1, 0, 4), (2, 0, 1), (3, 0, 1), (8, 0, 2), (9, 0, 1), (10, 0, 0), (11, 0, 5),
            (12, 0, 0), (13, 0, 0), (14, 0, 0), (18, 0, 3)]

    def __init__(self, topic):
        self.topic = topic.encode()
        self.joins = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            while True:
                head = _recv_exact(s, 4)
                if head is None:
                    return
                req = _recv_exact(s, struct.unpack(">i", head)[0])
                if req is None:
                    return
                key, ver, corr = struct.unpack(">hhi", req[:8])
                body = self._answer(key, ver)
                if body is not None:
                    msg = struct.pack(">i", corr) + body
                    s.sendall(struct.pack(">i", len(msg)) + msg)
        except OSError:
            pass
        finally:
            s.close()

    def _answer(self, key, ver):
        host = kstr("127.0.0.1")
        if key == 18:  # ApiVersions; v3's body is flexible (compact array, tags)
            if ver >= 3:
                apis = b"".join(struct.pack(">hhhb", k, lo, hi, 0) for k, lo, hi in self.APIS)
                return struct.pack(">hb", 0, len(self.APIS) + 1) + apis + struct.pack(">ib", 0, 0)
            apis = b"".join(struct.pack(">hhh", *a) for a in self.APIS)
            return struct.pack(">hi", 0, len(self.APIS)) + apis
        if key == 3:  # Metadata v0/v1: one broker, the topic with one partition
            brokers = struct.pack(">ii", 1, 0) + host + struct.pack(">i", self.port)
            if ver >= 1:
                brokers += struct.pack(">h", -1) + struct.pack(">i", 0)  # rack, controller
            part = struct.pack(">hiii", 0, 0, 0, 1) + struct.pack(">ii", 0, 1) + struct.pack(">i", 0)
            topic = struct.pack(">h", 0) + struct.pack(">h", len(self.topic)) + self.topic
            if ver >= 1:
                topic += b"\x00"  # is_internal
            return brokers + struct.pack(">i", 1) + topic + struct.pack(">i", 1) + part
        if key == 10:  # FindCoordinator v0: this node
            return struct.pack(">hi", 0, 0) + host + struct.pack(">i", self.port)
        if key == 11:  # JoinGroup v5: fenced
            self.joins += 1
            return struct.pack(">ihi", 0, 82, -1) + kstr("") + kstr("") + kstr("") + \
                struct.pack(">i", 0)
        return None  # anything else goes unanswered

    def close(self):
        self.srv.close()


def test_consumer_poll_returns_a_fatal_error(tmp_path):
    broker = FencingBroker("fenced")
    try:
        r = subprocess.run([CONSUMER_PROBE, f"127.0.0.1:{broker.port}", "g", "fenced", "i-1",
                            "20"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        d = json.loads(r.stdout.strip().splitlines()[-1])
        assert broker.joins >= 1
        # the fatal error is returned (WEFT_EIO), not logged and swallowed, and
        # every later poll of the dead consumer returns it again
        assert d["rc"] == -4 and d["again"] == -4, (d, r.stderr[-2000:])
        assert "fatal" in r.stderr.lower()
    finally:
        broker.close()


PRODUCER_PROBE = str(BIN_DIR / "weft-test-producer-probe")


def test_producer_free_reports_records_it_could_not_deliver(tmp_path):
    """weft_producer_free waits up to 10 s for deliveries; records still
    undelivered after that (the broker is down) are purged and each one's
    callback runs with an error, instead of being dropped with the handle
    (no report, and the callback's context leaked)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    r = subprocess.run([PRODUCER_PROBE, f"127.0.0.1:{port}", "t", "3"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {"reports": 3, "errors": 3}, r.stdout
