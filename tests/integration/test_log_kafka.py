"""`weft log` with unmodified Kafka clients from Debian: kcat (librdkafka
2.0.2), python3-kafka 2.0.2 and python3-confluent-kafka — produce,
consume, groups, admin — plus raw frames for bad input."""
import json
import socket
import struct
import subprocess
import time

import pytest

from kafkautil import Log, exchange, failing_fdatasync, frame, kstr, run_py


@pytest.fixture
def log(tmp_path):
    lg = Log(tmp_path)
    yield lg
    if lg.alive():
        lg.stop()


def kcat(*args, inp=None, timeout=30):
    r = subprocess.run(["kcat", *args], input=inp, capture_output=True, text=True,
                       timeout=timeout)
    return r


def test_kcat_produce_consume_and_metadata(log):
    r = kcat("-P", "-b", log.bootstrap, "-t", "orders", "-K:", inp="k1:one\nk2:two\nk1:three\n")
    assert r.returncode == 0, r.stderr
    r = kcat("-C", "-b", log.bootstrap, "-t", "orders", "-e", "-o", "beginning",
             "-f", "%k=%s@%o\\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["k1=one@0", "k2=two@1", "k1=three@2"]
    r = kcat("-L", "-b", log.bootstrap, "-J")
    assert r.returncode == 0, r.stderr
    md = json.loads(r.stdout)
    assert md["brokers"][0]["name"].endswith(f":{log.port}")
    topics = {t["topic"]: t for t in md["topics"]}
    assert len(topics["orders"]["partitions"]) == 1
    # offsets: beginning, end, and consuming from the middle
    r = kcat("-C", "-b", log.bootstrap, "-t", "orders", "-e", "-o", "1", "-f", "%s\\n")
    assert r.stdout.split() == ["two", "three"]


def test_kafka_python_producer_and_group_consumer(log):
    code = f"""
import json
from kafka import KafkaProducer, KafkaConsumer
p = KafkaProducer(bootstrap_servers="{log.bootstrap}",
                  value_serializer=lambda v: json.dumps(v).encode(), acks="all")
futs = [p.send("events", {{"n": i}}) for i in range(50)]
p.flush()
offs = [f.get(timeout=10).offset for f in futs]
assert offs == list(range(50)), offs
c = KafkaConsumer("events", bootstrap_servers="{log.bootstrap}", group_id="g1",
                  auto_offset_reset="earliest", enable_auto_commit=False,
                  value_deserializer=lambda b: json.loads(b), consumer_timeout_ms=8000)
got = []
for m in c:
    got.append(m.value["n"])
    if len(got) == 30:
        break
c.commit()
c.close()
# a new consumer of the same group continues after the committed offset
c = KafkaConsumer("events", bootstrap_servers="{log.bootstrap}", group_id="g1",
                  auto_offset_reset="earliest", value_deserializer=lambda b: json.loads(b),
                  consumer_timeout_ms=8000)
for m in c:
    got.append(m.value["n"])
    if len(got) == 50:
        break
c.close()
print(json.dumps(got))
"""
    r = run_py(code, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == list(range(50))


def test_confluent_idempotent_producer_and_admin(log):
    code = f"""
import json
from confluent_kafka import Producer, Consumer
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({{"bootstrap.servers": "{log.bootstrap}"}})
fs = a.create_topics([NewTopic("parts", num_partitions=3, replication_factor=1)])
fs["parts"].result(10)
try:
    a.create_topics([NewTopic("parts", num_partitions=3, replication_factor=1)])["parts"].result(10)
    print("NO-ERROR")
except Exception as e:
    print("dup:", e.args[0].code())
try:
    a.create_topics([NewTopic("bad", num_partitions=1, replication_factor=3)])["bad"].result(10)
except Exception as e:
    print("rf:", e.args[0].code())
p = Producer({{"bootstrap.servers": "{log.bootstrap}", "enable.idempotence": True,
              "linger.ms": 5}})
acked = []
def cb(err, msg):
    assert err is None, err
    acked.append((msg.partition(), msg.offset()))
for i in range(300):
    p.produce("parts", key=str(i), value=str(i), callback=cb)
p.flush(15)
c = Consumer({{"bootstrap.servers": "{log.bootstrap}", "group.id": "cg",
              "auto.offset.reset": "earliest"}})
c.subscribe(["parts"])
vals = []
import time
t = time.time()
while len(vals) < 300 and time.time() - t < 20:
    m = c.poll(0.5)
    if m is not None and m.error() is None:
        vals.append(int(m.value()))
c.close()
print(json.dumps({{"acked": len(acked), "parts": sorted(set(p for p, _ in acked)),
                   "vals": sorted(vals)}}))
"""
    r = run_py(code, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert "dup: 36" in lines  # TOPIC_ALREADY_EXISTS
    assert "rf: 38" in lines   # INVALID_REPLICATION_FACTOR
    d = json.loads(lines[-1])
    assert d["acked"] == 300 and d["parts"] == [0, 1, 2]
    assert d["vals"] == list(range(300))


def test_fetch_long_poll_wakes_on_produce(log):
    kcat("-P", "-b", log.bootstrap, "-t", "lp", inp="first\n")
    code = f"""
import time
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
c = KafkaConsumer(bootstrap_servers="{log.bootstrap}", fetch_max_wait_ms=5000)
tp = TopicPartition("lp", 0)
c.assign([tp]); c.seek(tp, 1)
c.poll(timeout_ms=200)
p = KafkaProducer(bootstrap_servers="{log.bootstrap}")
t = time.time()
p.send("lp", b"second"); p.flush()
while True:
    recs = c.poll(timeout_ms=6000)
    if recs:
        break
print(round(time.time() - t, 3), [r.value for r in recs[tp]])
"""
    r = run_py(code, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    secs, _, vals = r.stdout.strip().partition(" ")
    assert "b'second'" in vals
    assert float(secs) < 2.0  # woken by the append, not after the 5 s max wait


# ---- bad input ----

def test_garbage_frames_close_the_connection_and_the_broker_lives(log):
    for payload in (b"\x00\x00\x00\x02ab",                      # frame too small
                    b"\x7f\xff\xff\xff" + b"x" * 16,             # frame too large
                    frame(999, 0, 1, b""),                       # unknown API
                    frame(0, 99, 1, b""),                        # unsupported version
                    frame(3, 1, 7, b"\x00\x00\x00\x05"),         # truncated metadata
                    frame(0, 7, 1, b"\xff")):                    # truncated produce
        body, closed = exchange(log.port, payload)
        assert closed and body == b"", payload
    # still serving
    r = kcat("-L", "-b", log.bootstrap)
    assert r.returncode == 0, r.stderr


def test_api_versions_v3_gets_v0_error_35(log):
    body, closed = exchange(log.port, frame(18, 3, 42, b"\x00\x00"))
    assert not closed
    corr, err, n = struct.unpack(">ihi", body[:10])
    assert (corr, err, n) == (42, 35, 1)
    assert struct.unpack(">hhh", body[10:16]) == (18, 0, 2)


def produce_body(topic, records, acks=1):
    return (struct.pack(">h", -1) + struct.pack(">hi", acks, 5000) + struct.pack(">i", 1) +
            kstr(topic) + struct.pack(">i", 1) + struct.pack(">i", 0) +
            struct.pack(">i", len(records)) + records)


def test_corrupt_batches_are_refused_with_kafka_error_codes(log):
    kcat("-P", "-b", log.bootstrap, "-t", "raw", inp="x\n")
    # a valid batch from kcat, read back raw
    good = bytearray(fetch_raw(log, "raw"))
    assert len(good) > 61
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    truncated = good[:-3]
    two = good + good
    count_off = bytearray(good)
    count_off[57:61] = struct.pack(">i", 5)  # recordsCount disagrees with the records
    # CRC and framing damage: CORRUPT_MESSAGE (2, Kafka's CorruptRecordException);
    # a batch whose records do not add up: INVALID_RECORD (87), as Kafka's LogValidator
    cases = [(bytes(bad_crc), 2), (b"\x00" * 70, 2), (bytes(truncated), 87), (bytes(two), 87),
             (bytes(count_off), 2)]  # the CRC covers the count: caught as corruption first
    for rec, want in cases:
        body, closed = exchange(log.port, frame(0, 7, 9, produce_body("raw", rec)))
        assert not closed
        # corr | topics[1] name | partitions[1] index, error
        off = 4 + 4 + 2 + 3 + 4 + 4
        (err,) = struct.unpack(">h", body[off:off + 2])
        assert err == want, (rec[:8], err, want)
    r = kcat("-C", "-b", log.bootstrap, "-t", "raw", "-e", "-f", "%s\\n")
    assert r.stdout.split() == ["x"]  # nothing was appended


def fetch_raw(log, topic):
    body = (struct.pack(">iiiib", -1, 100, 1, 1 << 20, 0) + struct.pack(">i", 1) + kstr(topic) +
            struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 1 << 20))
    resp, closed = exchange(log.port, frame(1, 4, 3, body))
    assert not closed
    # corr, throttle, topics, name, parts, index, err, hw, lso, aborted(-1), records
    off = 4 + 4 + 4 + 2 + len(topic) + 4 + 4 + 2 + 8 + 8 + 4
    (n,) = struct.unpack(">i", resp[off:off + 4])
    return resp[off + 4:off + 4 + n]


def test_auto_create_off_refuses_unknown_topics(tmp_path):
    cfg = tmp_path / "log.yaml"
    cfg.write_text("log:\n  auto_create: false\n  partitions: 3\n")
    lg = Log(tmp_path, extra=("-c", str(cfg)))
    try:
        # Metadata names the topic as unknown (error 3) instead of creating it
        body = struct.pack(">i", 1) + kstr("nope") + b"\x01"
        resp, closed = exchange(lg.port, frame(3, 4, 5, body))
        assert not closed
        assert b"nope" in resp
        at = resp.index(b"\x00\x04nope")
        (err,) = struct.unpack(">h", resp[at - 2:at])
        assert err == 3
        # a producer gets UNKNOWN_TOPIC_OR_PARTITION, nothing is created
        r = kcat("-P", "-b", lg.bootstrap, "-t", "nope", "-X", "message.timeout.ms=3000",
                 inp="x\n", timeout=30)
        assert r.returncode != 0
        assert not any(p.name.startswith("nope") for p in lg.data.iterdir())
        # CreateTopics still works; partitions -1 takes the configured default
        body = (struct.pack(">i", 1) + kstr("made") + struct.pack(">ih", -1, -1) +
                struct.pack(">ii", 0, 0) + struct.pack(">i", 5000) + b"\x00")
        resp, closed = exchange(lg.port, frame(19, 2, 6, body))
        assert not closed
        at = resp.index(b"\x00\x04made") + 6
        assert struct.unpack(">h", resp[at:at + 2])[0] == 0
        r = kcat("-L", "-b", lg.bootstrap, "-t", "made", "-J")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["topics"][0]["partitions"]) == 3
    finally:
        lg.stop()


def test_describe_groups_shows_members_client_ids(log):
    """DescribeGroups (kafka-python's admin client) reports each member's
    client id as sent in its request headers, cut to 127 bytes, and the
    member ids the coordinator made from them."""
    long_id = "c" * 300
    code = f"""
import json, time
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
p = KafkaProducer(bootstrap_servers="{log.bootstrap}")
p.send("dg", b"x").get(timeout=10)
p.close()
out = {{}}
for cid in ("weft-test-client", "{long_id}"):
    c = KafkaConsumer("dg", bootstrap_servers="{log.bootstrap}", group_id="g-" + cid[:8],
                      client_id=cid, auto_offset_reset="earliest", consumer_timeout_ms=8000)
    next(iter(c))  # joined and assigned: the group is Stable
    a = KafkaAdminClient(bootstrap_servers="{log.bootstrap}")
    g = a.describe_consumer_groups(["g-" + cid[:8]])[0]
    out[cid[:8]] = [g.state, [(m.client_id, m.member_id) for m in g.members]]
    a.close()
    c.close()
print(json.dumps(out))
"""
    r = run_py(code, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    state, members = out["weft-tes"]
    assert state == "Stable" and len(members) == 1, out
    assert members[0][0] == "weft-test-client"
    assert members[0][1].startswith("weft-test-client-"), members
    state, members = out["cccccccc"]
    assert state == "Stable" and len(members) == 1, out
    assert members[0][0] == "c" * 127, members


# ---- Fetch edge cases (raw frames) ----

def fetch_body(parts, max_wait=100, min_bytes=1, max_bytes=1 << 20, pmax=1 << 20):
    """Fetch v4 body for [(topic, partition, offset)], one topic entry each."""
    body = struct.pack(">iiiib", -1, max_wait, min_bytes, max_bytes, 0) + struct.pack(">i", len(parts))
    for topic, part, off in parts:
        body += kstr(topic) + struct.pack(">i", 1) + struct.pack(">iqi", part, off, pmax)
    return body


def parse_fetch_v4(resp):
    """[(topic, partition, error, hw, records length)] from a Fetch v4 response."""
    at = 4 + 4  # corr, throttle
    out = []
    (nt,) = struct.unpack(">i", resp[at:at + 4]); at += 4
    for _ in range(nt):
        (ln,) = struct.unpack(">h", resp[at:at + 2]); at += 2
        name = resp[at:at + ln].decode(); at += ln
        (np_,) = struct.unpack(">i", resp[at:at + 4]); at += 4
        for _ in range(np_):
            part, err, hw, _lso, _ab, n = struct.unpack(">ihqqii", resp[at:at + 30]); at += 30
            out.append((name, part, err, hw, n))
            at += n
    assert at == len(resp)
    return out


def test_fetch_listing_a_partition_twice_survives_the_wake(log):
    """A parked fetch that names the same partition twice sits twice on its
    waiter list; the append that completes it must not touch it again."""
    import socket, time
    kcat("-P", "-b", log.bootstrap, "-t", "twice", inp="a\n")
    s = socket.create_connection(("127.0.0.1", log.port), timeout=10)
    try:
        s.sendall(frame(1, 4, 77, fetch_body([("twice", 0, 1), ("twice", 0, 1)], max_wait=5000)))
        time.sleep(0.3)  # parked
        t = time.monotonic()
        r = kcat("-P", "-b", log.bootstrap, "-t", "twice", inp="b\n")
        assert r.returncode == 0, r.stderr
        (n,) = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))
        resp = s.recv(n, socket.MSG_WAITALL)
        assert time.monotonic() - t < 3
    finally:
        s.close()
    assert struct.unpack(">i", resp[:4])[0] == 77
    assert [p[4] > 0 for p in parse_fetch_v4(resp)] == [True, True]
    assert log.alive()
    assert kcat("-L", "-b", log.bootstrap).returncode == 0


def test_an_append_wakes_every_parked_fetch(log):
    """Not only the first 64 fetches parked on a partition: all of them."""
    import socket, time
    kcat("-P", "-b", log.bootstrap, "-t", "many", inp="a\n")
    socks = []
    try:
        for i in range(80):
            s = socket.create_connection(("127.0.0.1", log.port), timeout=10)
            s.sendall(frame(1, 4, i, fetch_body([("many", 0, 1)], max_wait=8000)))
            socks.append(s)
        time.sleep(0.3)  # parked
        t = time.monotonic()
        assert kcat("-P", "-b", log.bootstrap, "-t", "many", inp="b\n").returncode == 0
        for i, s in enumerate(socks):
            (n,) = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))
            resp = s.recv(n, socket.MSG_WAITALL)
            assert struct.unpack(">i", resp[:4])[0] == i
            assert parse_fetch_v4(resp)[0][4] > 0
        assert time.monotonic() - t < 4
    finally:
        for s in socks:
            s.close()


def test_fetch_max_bytes_bounds_the_whole_response(log):
    """Only the first partition's first batch may go past the response's
    max_bytes (KIP-74); once it has, the other partitions get nothing."""
    body = (struct.pack(">i", 1) + kstr("mb3") + struct.pack(">ih", 3, 1) +
            struct.pack(">ii", 0, 0) + struct.pack(">i", 5000) + b"\x00")
    resp, closed = exchange(log.port, frame(19, 2, 6, body))
    assert not closed
    for p in range(3):
        r = kcat("-P", "-b", log.bootstrap, "-t", "mb3", "-p", str(p), inp="x" * 100 + "\n")
        assert r.returncode == 0, r.stderr
    resp, closed = exchange(log.port, frame(1, 4, 3, fetch_body(
        [("mb3", 0, 0), ("mb3", 1, 0), ("mb3", 2, 0)], max_bytes=10)))
    assert not closed
    got = parse_fetch_v4(resp)
    assert [g[2] for g in got] == [0, 0, 0]
    assert got[0][4] > 10                      # the first batch, over the limit
    assert [g[4] for g in got[1:]] == [0, 0]   # and nothing more


def test_fetch_with_an_error_is_answered_without_waiting(log):
    """As Kafka: a partition that cannot be read (offset out of range,
    unknown partition) answers the fetch at once instead of long-polling
    max_wait, so a consumer resets its offset without a stall."""
    import time
    kcat("-P", "-b", log.bootstrap, "-t", "oor", inp="a\n")
    for parts, want in (([("oor", 0, 100)], 1), ([("oor", 7, 0)], 3)):
        t = time.monotonic()
        resp, closed = exchange(log.port, frame(1, 4, 3, fetch_body(parts, max_wait=4000)),
                                timeout=10)
        took = time.monotonic() - t
        assert not closed
        assert parse_fetch_v4(resp)[0][2] == want
        assert took < 2, took


def idem_batch(pid, epoch, seq, n):
    code = f"""
import sys
from kafka.record.default_records import DefaultRecordBatchBuilder as B
b = B(magic=2, compression_type=0, is_transactional=False, producer_id={pid},
      producer_epoch={epoch}, base_sequence={seq}, batch_size=1 << 20)
for i in range({n}):
    b.append(i, timestamp=1700000000000 + i, key=None, value=b"v%d" % i, headers=[])
sys.stdout.buffer.write(bytes(b.build()))
"""
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_idempotent_sequences_near_int32_max_wrap_as_kafka(log):
    """A batch whose sequences run past INT32_MAX wraps to 0 (Kafka's
    DefaultRecordBatch.incrementSequence): no signed overflow in the broker,
    and an unknown producer starting there is out of order (45)."""
    kcat("-P", "-b", log.bootstrap, "-t", "seqwrap", inp="x\n")
    off = 4 + 4 + 2 + len("seqwrap") + 4 + 4
    rec = idem_batch(4242, 0, 2**31 - 1, 3)
    body, closed = exchange(log.port, frame(0, 7, 9, produce_body("seqwrap", rec, acks=-1)))
    assert not closed
    assert struct.unpack(">h", body[off:off + 2])[0] == 45
    # a producer at sequence 0 is accepted and its retry is a duplicate
    rec = idem_batch(4243, 0, 0, 3)
    for _ in range(2):
        body, closed = exchange(log.port, frame(0, 7, 9, produce_body("seqwrap", rec, acks=-1)))
        assert not closed
        err, base = struct.unpack(">hq", body[off:off + 10])
        assert (err, base) == (0, 1)
    log.stop()  # no sanitizer report


def test_retry_of_a_batch_whose_flush_failed_is_not_acknowledged(tmp_path):
    """An idempotent producer's retry of an acks=all batch is answered as
    its original is: after the original's flush failed, with
    KAFKA_STORAGE_ERROR again, not with its offset as if it were durable."""
    flag, env = failing_fdatasync(tmp_path)
    lg = Log(tmp_path, env=env)
    try:
        kcat("-P", "-b", lg.bootstrap, "-t", "dupfail", inp="x\n")
        off = 4 + 4 + 2 + len("dupfail") + 4 + 4
        flag.touch()
        rec = idem_batch(5150, 0, 0, 2)
        for attempt in ("original", "retry"):
            body, closed = exchange(lg.port,
                                    frame(0, 7, 9, produce_body("dupfail", rec, acks=-1)))
            assert not closed, attempt
            err, base = struct.unpack(">hq", body[off:off + 10])
            assert (err, base) == (56, -1), (attempt, err, base)
    finally:
        lg.stop()


# ---- the group coordinator, spoken to in raw frames over kept connections ----

def str_bytes_array(pairs):
    """A Kafka array of (string, bytes) entries: protocols, assignments."""
    return struct.pack(">i", len(pairs)) + b"".join(
        kstr(s) + struct.pack(">i", len(b)) + b for s, b in pairs)


class GroupConn:
    """One connection to the coordinator; requests may stay parked."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.corr = 0

    def send(self, key, ver, body):
        self.corr += 1
        self.s.sendall(frame(key, ver, self.corr, body))

    def recv(self, timeout=10):
        self.s.settimeout(timeout)
        head = self._exact(4)
        (n,) = struct.unpack(">i", head)
        return self._exact(n)[4:]  # past the correlation id

    def _exact(self, n):
        out = b""
        while len(out) < n:
            d = self.s.recv(n - len(out))
            assert d, "connection closed"
            out += d
        return out

    def parked(self, wait=0.5):
        """True when nothing has been answered within wait seconds."""
        self.s.settimeout(wait)
        try:
            return not self.s.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            return True

    def join(self, group, member="", protos=(("range", b"m"),), session=6000, rebalance=30000,
             ptype="consumer"):
        body = kstr(group) + struct.pack(">ii", session, rebalance) + kstr(member) + kstr(ptype)
        self.send(11, 2, body + str_bytes_array(protos))

    def join_answer(self):
        r = self.recv()
        (err, gen) = struct.unpack(">hi", r[4:10])
        at, out = 10, []
        for _ in range(3):  # protocol, leader, member id
            (n,) = struct.unpack(">h", r[at:at + 2])
            out.append(r[at + 2:at + 2 + n].decode())
            at += 2 + n
        return err, gen, out[0], out[1], out[2]

    def sync(self, group, gen, member, assignments=()):
        body = kstr(group) + struct.pack(">i", gen) + kstr(member)
        self.send(14, 1, body + str_bytes_array(assignments))

    def sync_answer(self):
        r = self.recv()
        (err, n) = struct.unpack(">hi", r[4:10])
        return err, r[10:10 + max(n, 0)]

    def heartbeat(self, group, gen, member):
        self.send(12, 1, kstr(group) + struct.pack(">i", gen) + kstr(member))
        (err,) = struct.unpack(">h", self.recv()[4:6])
        return err

    def close(self):
        self.s.close()


@pytest.fixture
def glog(tmp_path):
    """A log whose groups complete their first join at once (no initial delay)."""
    cfg = tmp_path / "log.yaml"
    cfg.write_text("log:\n  group_initial_delay_ms: 0\n")
    lg = Log(tmp_path, extra=("-c", str(cfg)))
    yield lg
    if lg.alive():
        lg.stop()


def stable_pair(port, group):
    """Leader and follower in a Stable generation: (lc, lid, fc, fid, gen)."""
    lc, fc = GroupConn(port), GroupConn(port)
    lc.join(group)
    err, gen, _, leader, lid = lc.join_answer()
    assert err == 0 and leader == lid
    lc.sync(group, gen, lid, [(lid, b"L")])
    assert lc.sync_answer() == (0, b"L")
    fc.join(group)  # parks: the leader must rejoin
    assert fc.parked()
    assert lc.heartbeat(group, gen, lid) == 27
    lc.join(group, lid)
    err, gen, _, leader, lid2 = lc.join_answer()
    assert err == 0 and leader == lid == lid2
    ferr, fgen, _, _, fid = fc.join_answer()
    assert ferr == 0 and fgen == gen
    return lc, lid, fc, fid, gen


def test_follower_parked_in_sync_is_not_expired_when_answered(glog):
    """A follower whose SyncGroup waited longer than its session timeout for
    the leader's is alive (it was waiting on us): once answered it has a
    full session to heartbeat in, as in Kafka, instead of being expired by
    the next sweep."""
    lc, lid, fc, fid, gen = stable_pair(glog.port, "slow-leader")
    fc.sync("slow-leader", gen, fid)
    assert fc.parked()
    for _ in range(4):  # the leader takes 7 s (> 6 s session) to assign
        assert lc.heartbeat("slow-leader", gen, lid) == 27
        time.sleep(1.75)
    lc.sync("slow-leader", gen, lid, [(lid, b"L"), (fid, b"F")])
    assert lc.sync_answer() == (0, b"L")
    assert fc.sync_answer() == (0, b"F")
    time.sleep(1.0)
    assert fc.heartbeat("slow-leader", gen, fid) == 0
    assert lc.heartbeat("slow-leader", gen, lid) == 0


def test_join_with_no_common_protocol_is_refused_alone(glog):
    """A member offering no protocol the group's members all support gets
    INCONSISTENT_GROUP_PROTOCOL (23) at once, as in Kafka, and the Stable
    group is left alone — not pulled into a rebalance whose every member
    is then refused."""
    lc, fc = GroupConn(glog.port), GroupConn(glog.port)
    lc.join("proto")
    err, gen, proto, _, lid = lc.join_answer()
    assert (err, proto) == (0, "range")
    lc.sync("proto", gen, lid, [(lid, b"L")])
    assert lc.sync_answer() == (0, b"L")
    fc.join("proto", protos=(("roundrobin", b"m"),))
    assert not fc.parked(2.0)
    assert fc.join_answer()[0] == 23
    assert lc.heartbeat("proto", gen, lid) == 0


def test_connection_dying_while_its_joins_are_answered(glog):
    """Two members' JoinGroups parked on one connection whose peer has reset
    it: answering the first fails to send and closes the connection, which
    cancels the second. Completing the join must skip the cancelled one
    (the broker crashed on a NULL parked request) and answer the rest."""
    port = glog.port
    b, d = GroupConn(port), GroupConn(port)
    b.join("reset")  # X: generation 1 at once, X leads
    err, _, _, _, xid = b.join_answer()
    assert err == 0
    d.join("reset")  # Z: parks, the group prepares a rebalance
    assert d.parked()
    d.close()  # Z's join is cancelled; Z stays a member (session 6 s)
    time.sleep(0.3)
    a = GroupConn(port)
    a.join("reset")  # Y (new) and X, parked on one connection, Y first
    a.join("reset", xid)
    # fill the connection's in-flight window so the broker stops watching it
    api_versions = frame(18, 0, 0, b"")
    a.s.sendall(api_versions * 1022)
    time.sleep(0.5)
    a.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()  # reset, unnoticed until the broker writes to it
    time.sleep(0.2)
    # Z rejoins: everyone has, the join completes and answers Y, then X
    desc = GroupConn(port)
    desc.send(15, 0, struct.pack(">i", 1) + kstr("reset"))
    r = desc.recv()
    at = r.index(kstr("reset")) + len(kstr("reset"))
    at += 2 + struct.unpack(">h", r[at:at + 2])[0]  # state
    at += 2 + struct.unpack(">h", r[at:at + 2])[0]  # protocol type
    at += 2 + struct.unpack(">h", r[at:at + 2])[0]  # protocol
    (n,) = struct.unpack(">i", r[at:at + 4])
    assert n == 3
    ids = []
    at += 4
    for _ in range(n):
        (k,) = struct.unpack(">h", r[at:at + 2])
        ids.append(r[at + 2:at + 2 + k].decode())
        at += 2 + k
        for _ in range(2):  # client id, host
            at += 2 + struct.unpack(">h", r[at:at + 2])[0]
        for _ in range(2):  # metadata, assignment
            at += 4 + struct.unpack(">i", r[at:at + 4])[0]
    zid = [m for m in ids if m != xid][1]  # newest first: Y, Z, X
    z = GroupConn(port)
    z.join("reset", zid)
    err, gen, _, leader, mid = z.join_answer()
    assert (err, mid, leader) == (0, zid, xid)
    assert glog.alive()
    assert z.heartbeat("reset", gen, zid) == 27  # CompletingRebalance


def test_initial_delay_extensions_are_bounded_by_the_rebalance_timeout(log):
    """Each new member extends a new group's initial delay (3 s), but, as in
    Kafka's InitialDelayedJoin, never past the rebalance timeout from the
    first join: consumers arriving every 1.5 s must not keep the first
    one waiting for ever."""
    first = GroupConn(log.port)
    t0 = time.monotonic()
    first.join("trickle", rebalance=4000)
    later = []
    for _ in range(5):
        time.sleep(1.5)
        later.append(GroupConn(log.port))
        later[-1].join("trickle", rebalance=4000)
    assert not first.parked(0.3), "still waiting %.1f s after joining" % (time.monotonic() - t0)
    err, gen, _, _, _ = first.join_answer()
    assert (err, gen) == (0, 1)


def test_offset_commit_whose_flush_fails_is_not_acknowledged(tmp_path):
    """OffsetCommit is answered once the offsets file is fdatasync'd; when
    that fails, NOT_COORDINATOR (16), as Kafka answers when its offsets log
    cannot be written, so the client commits again."""
    flag, env = failing_fdatasync(tmp_path)
    lg = Log(tmp_path, env=env)
    try:
        kcat("-P", "-b", lg.bootstrap, "-t", "committed", inp="x\n")

        def commit(offset):
            body = (kstr("simple-group") + struct.pack(">i", -1) + kstr("") +
                    struct.pack(">q", -1) + struct.pack(">i", 1) + kstr("committed") +
                    struct.pack(">i", 1) + struct.pack(">iq", 0, offset) + kstr(""))
            resp, closed = exchange(lg.port, frame(8, 2, 7, body))
            assert not closed
            # v2: topics [name, partitions [partition, error]]
            at = 4 + 4 + 2 + len("committed") + 4 + 4
            return struct.unpack(">h", resp[at:at + 2])[0]
        assert commit(1) == 0
        flag.touch()
        assert commit(2) == 16
        flag.unlink()
        assert commit(3) == 0
    finally:
        lg.stop()
    lg = Log(tmp_path, data=lg.data)
    try:  # the last acknowledged commit is what a restart finds
        body = kstr("simple-group") + struct.pack(">i", 1) + kstr("committed") + \
            struct.pack(">ii", 1, 0)
        resp, closed = exchange(lg.port, frame(9, 1, 7, body))
        assert not closed
        at = 4 + 4 + 2 + len("committed") + 4 + 4
        assert struct.unpack(">q", resp[at:at + 8])[0] == 3
    finally:
        lg.stop()


def test_unchanged_rejoin_while_syncing_gets_the_current_generation(glog):
    """A member that rejoins unchanged while the group is CompletingRebalance
    (its JoinGroup answer was lost, or its client timed out waiting) gets
    the current generation again — the leader with every member's
    metadata — as in Kafka, instead of starting another rebalance that
    throws away the generation the others are syncing."""
    lc, lid, fc, fid, gen = stable_pair(glog.port, "resync")
    fc.join("resync", fid)
    assert not fc.parked(2.0), "an unchanged rejoin must be answered at once"
    err, fgen, proto, leader, fid2 = fc.join_answer()
    assert (err, fgen, proto, leader, fid2) == (0, gen, "range", lid, fid)
    lc.join("resync", lid)
    assert not lc.parked(2.0)
    r = lc.recv()
    err, lgen = struct.unpack(">hi", r[4:10])
    assert (err, lgen) == (0, gen)
    at = 10
    for _ in range(3):  # protocol, leader, member id
        at += 2 + struct.unpack(">h", r[at:at + 2])[0]
    assert struct.unpack(">i", r[at:at + 4]) == (2,), "the leader gets both members again"
    # the generation still completes: nobody was told to rejoin
    lc.sync("resync", gen, lid, [(lid, b"L"), (fid, b"F")])
    assert lc.sync_answer() == (0, b"L")
    fc.sync("resync", gen, fid)
    assert fc.sync_answer() == (0, b"F")
    assert fc.heartbeat("resync", gen, fid) == 0
    assert lc.heartbeat("resync", gen, lid) == 0
    # a changed rejoin still rebalances
    fc.join("resync", fid, protos=(("range", b"other"),))
    assert fc.parked()
    assert lc.heartbeat("resync", gen, lid) == 27


def test_create_topics_naming_one_topic_twice_refuses_both(log):
    """A CreateTopics request that names a topic twice gets INVALID_REQUEST
    (42) for both entries, as Kafka answers, and creates neither; the other
    topics of the request are created."""
    def topic(name):
        return kstr(name) + struct.pack(">ihii", 1, 1, 0, 0)
    body = struct.pack(">i", 3) + topic("twice") + topic("once") + topic("twice") + \
        struct.pack(">ib", 5000, 0)
    resp, closed = exchange(log.port, frame(19, 2, 11, body))
    assert not closed
    at, out = 4 + 4, []  # correlation id, throttle time
    (n,) = struct.unpack(">i", resp[at:at + 4])
    at += 4
    for _ in range(n):
        (ln,) = struct.unpack(">h", resp[at:at + 2])
        name = resp[at + 2:at + 2 + ln].decode()
        at += 2 + ln
        err, mlen = struct.unpack(">hh", resp[at:at + 4])
        at += 4 + max(mlen, 0)
        out.append((name, err))
    assert out == [("twice", 42), ("once", 0), ("twice", 42)]
    listing = kcat("-L", "-b", log.bootstrap).stdout
    assert 'topic "once"' in listing and 'topic "twice"' not in listing


def test_pipelined_requests_beyond_the_inflight_limit_are_all_answered(log):
    # More requests than the broker keeps in flight (1024), sent in one go
    # while nothing is read: the ones it stopped parsing at the limit sit in
    # its input buffer, and nothing more arrives on the socket to wake it.
    n = 3000
    s = socket.create_connection(("127.0.0.1", log.port), timeout=10)
    try:
        s.sendall(b"".join(frame(18, 0, i, b"") for i in range(n)))
        for i in range(n):
            head = b""
            while len(head) < 4:
                d = s.recv(4 - len(head))
                assert d, f"closed after {i} responses"
                head += d
            (size,) = struct.unpack(">i", head)
            body = b""
            while len(body) < size:
                d = s.recv(size - len(body))
                assert d, f"closed inside response {i}"
                body += d
            assert struct.unpack(">i", body[:4])[0] == i
    except socket.timeout:
        pytest.fail(f"no response {i} of {n}")
    finally:
        s.close()
