"""`weft log`: consumer groups rebalancing with real consumers (a third
joins, one is killed -9), kill -9 of the broker during an acks=all produce
loop, torn segment tails, retention, ListOffsets by time."""
import json
import random
import shutil
import struct
import subprocess
import threading
import time


from kafkautil import Log, exchange, failing_fdatasync, frame, kstr, run_py
from svcutil import wait_until

CONSUMER = r"""
import json, sys
from kafka import KafkaConsumer, ConsumerRebalanceListener
boot, topic, group = sys.argv[1:4]
class L(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass
    def on_partitions_assigned(self, assigned):
        print(json.dumps(sorted(tp.partition for tp in assigned)), flush=True)
c = KafkaConsumer(bootstrap_servers=boot, group_id=group, session_timeout_ms=6000,
                  heartbeat_interval_ms=500, auto_offset_reset="earliest")
c.subscribe([topic], listener=L())
while True:
    c.poll(timeout_ms=200)
"""


class Consumer:
    def __init__(self, boot, topic, group):
        self.p = subprocess.Popen(["/usr/bin/python3", "-c", CONSUMER, boot, topic, group],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.assigned = None
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            try:
                self.assigned = json.loads(line)
            except ValueError:
                pass

    def kill(self):
        self.p.kill()
        self.p.wait(timeout=10)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def create_topic(boot, name, partitions, configs=None):
    code = f"""
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers="{boot}")
a.create_topics([NewTopic("{name}", {partitions}, 1, topic_configs={configs or {}!r})])
a.close()
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr[-2000:]


def covers(consumers, n):
    parts = [c.assigned for c in consumers]
    if any(p is None or not p for p in parts):
        return False
    flat = [x for p in parts for x in p]
    return sorted(flat) == list(range(n))


def test_group_rebalances_when_a_consumer_joins_and_when_one_is_killed(tmp_path):
    log = Log(tmp_path)
    cs = []
    try:
        create_topic(log.bootstrap, "g6", 6)
        a, b = Consumer(log.bootstrap, "g6", "rg"), Consumer(log.bootstrap, "g6", "rg")
        cs += [a, b]
        wait_until(lambda: covers([a, b], 6), timeout=40, interval=0.2, what="two-way split")
        c = Consumer(log.bootstrap, "g6", "rg")
        cs.append(c)
        wait_until(lambda: covers([a, b, c], 6) and all(len(x.assigned) == 2 for x in (a, b, c)),
                   timeout=40, interval=0.2, what="three-way split after a join")
        t0 = time.monotonic()
        b.kill()
        wait_until(lambda: covers([a, c], 6), timeout=30, interval=0.2,
                   what="the killed member's partitions reassigned")
        took = time.monotonic() - t0
        assert took >= 5.0  # not before its 6 s session timeout (heartbeats stop at the kill)
        assert "group member expired" in log.text()
    finally:
        for x in cs:
            x.stop()
        log.stop()


PRODUCER = r"""
import sys
from confluent_kafka import Producer
boot = sys.argv[1]
p = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 1,
              "message.timeout.ms": 3000, "retries": 0})
def cb(err, msg):
    if err is None:
        print(msg.value().decode(), msg.offset(), flush=True)
i = 0
while True:
    p.produce("dur", value=str(i).encode(), callback=cb)
    i += 1
    p.poll(0)
    if i % 50 == 0:
        p.flush(1)
"""


def test_kill9_during_acks_all_loses_no_acknowledged_record(tmp_path):
    log = Log(tmp_path)
    data = log.data
    prod = subprocess.Popen(["/usr/bin/python3", "-c", PRODUCER, log.bootstrap],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    acked = []

    def read():
        for line in prod.stdout:
            v, off = line.split()
            acked.append((int(v), int(off)))
    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_until(lambda: len(acked) > 2000, timeout=60, interval=0.1, what="acknowledged records")
    log.kill()  # SIGKILL
    # the active segment was preallocated: what a crash leaves is zeros after the data
    assert (data / "dur-0" / "00000000000000000000.log").stat().st_size == 4 << 20
    time.sleep(0.5)
    prod.kill()
    prod.wait(timeout=10)
    t.join(timeout=5)
    got = list(acked)
    log2 = Log(tmp_path, data=data, name="log2")
    try:
        code = f"""
import json
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers="{log2.bootstrap}", consumer_timeout_ms=5000,
                  auto_offset_reset="earliest")
tp = TopicPartition("dur", 0)
c.assign([tp]); c.seek_to_beginning(tp)
out = [(int(m.value), m.offset) for m in c]
print(json.dumps(out))
"""
        r = run_py(code, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        stored = json.loads(r.stdout.strip().splitlines()[-1])
        by_offset = {off: v for v, off in stored}
        for v, off in got:  # every acknowledged record, at the offset it was acknowledged with
            assert by_offset.get(off) == v, (v, off)
        offs = [o for _, o in stored]
        assert offs == list(range(len(offs)))  # dense, in order
    finally:
        log2.stop()


def test_torn_tail_keeps_a_prefix_and_appends_continue(tmp_path):
    log = Log(tmp_path)
    data = log.data
    r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", "torn", "-X", "linger.ms=0",
                        "-X", "batch.num.messages=1"], input="".join(f"m{i}\n" for i in range(200)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    log.stop()
    seg = data / "torn-0" / "00000000000000000000.log"
    size = seg.stat().st_size
    rng = random.Random(7)
    cut = rng.randint(1, size // 2)
    with open(seg, "r+b") as f:
        f.truncate(size - cut)
    log2 = Log(tmp_path, data=data, name="log2")
    try:
        r = subprocess.run(["kcat", "-C", "-b", log2.bootstrap, "-t", "torn", "-e", "-f",
                            "%s %o\\n"], capture_output=True, text=True, timeout=30)
        rows = [line.split() for line in r.stdout.splitlines()]
        assert 0 < len(rows) < 200
        assert rows == [[f"m{i}", str(i)] for i in range(len(rows))]  # exactly a prefix
        n = len(rows)
        r = subprocess.run(["kcat", "-P", "-b", log2.bootstrap, "-t", "torn"], input="after\n",
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0
        r = subprocess.run(["kcat", "-C", "-b", log2.bootstrap, "-t", "torn", "-e", "-o", str(n),
                            "-f", "%s %o\\n"], capture_output=True, text=True, timeout=30)
        assert r.stdout.split() == ["after", str(n)]
        assert "truncat" in log2.text().lower()
    finally:
        log2.stop()


def test_segments_preallocated_while_active_and_cut_to_the_data_on_shutdown(tmp_path):
    def produce(log, n):
        r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", "pre"],
                           input="".join(f"r{i}\n" for i in range(n)), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def consume(log):
        r = subprocess.run(["kcat", "-C", "-b", log.bootstrap, "-t", "pre", "-e", "-f", "%s\n"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.split()

    log = Log(tmp_path)
    seg = log.data / "pre-0" / "00000000000000000000.log"
    try:
        produce(log, 300)
        assert seg.stat().st_size == 4 << 20  # the default preallocate_bytes
    finally:
        log.stop()
    size = seg.stat().st_size
    assert 300 * 10 < size < 64 << 10  # cut back to the batches on a clean stop
    log2 = Log(tmp_path, data=log.data, name="log2")
    try:
        assert consume(log2) == [f"r{i}" for i in range(300)]
        assert "tail truncated" not in log2.text() and "truncated_bytes=0" in log2.text()
    finally:
        log2.stop()
    cfg = tmp_path / "nopre.yaml"
    cfg.write_text("log:\n  preallocate_bytes: 0\n")
    log3 = Log(tmp_path, data=log.data, name="log3", extra=("-c", str(cfg)))
    try:
        produce(log3, 10)
        grown = seg.stat().st_size
        assert size < grown < size + 4096  # no preallocation: the file is the data
        assert len(consume(log3)) == 310
    finally:
        log3.stop()


def list_offsets_v0(log, topic, ts, max_num):
    body = struct.pack(">ii", -1, 1) + kstr(topic) + struct.pack(">iiqi", 1, 0, ts, max_num)
    resp, closed = exchange(log.port, frame(2, 0, 7, body))
    assert not closed
    at = 4 + 4 + 2 + len(topic) + 4  # corr id, topics, name, partitions
    part, err, n = struct.unpack(">ihi", resp[at:at + 10])
    assert (part, err) == (0, 0)
    return list(struct.unpack(f">{n}q", resp[at + 10:at + 10 + 8 * n]))


def test_retention_by_bytes_and_list_offsets_by_time(tmp_path):
    cfg = tmp_path / "log.yaml"
    cfg.write_text("log:\n  retention_check_ms: 200\n")
    log = Log(tmp_path, extra=("-c", str(cfg)))
    try:
        create_topic(log.bootstrap, "ret", 1, {"segment.bytes": "4096",
                                               "retention.bytes": "16384"})
        t_mid = None
        payload = "x" * 200
        for k in range(4):
            r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", "ret", "-X",
                                "linger.ms=0", "-X", "batch.num.messages=1"],
                               input="".join(f"{k}-{i}-{payload}\n" for i in range(50)),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            if k == 1:
                time.sleep(0.05)
                t_mid = int(time.time() * 1000)
                time.sleep(0.05)
        code = f"""
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers="{log.bootstrap}")
tp = TopicPartition("ret", 0)
print(c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp],
      c.offsets_for_times({{tp: {t_mid}}})[tp].offset)
"""
        def offsets():
            r = run_py(code)
            assert r.returncode == 0, r.stderr[-2000:]
            return [int(x) for x in r.stdout.split()]
        wait_until(lambda: offsets()[0] > 0, timeout=10, interval=0.3, what="retention")
        start, end, at_mid = offsets()
        assert end == 200 and 0 < start < end
        seg_bytes = sum(f.stat().st_size for f in (log.data / "ret-0").glob("*.log"))
        assert seg_bytes <= 16384 + 4096 + 512
        # the first record produced after t_mid is in round 2 (offset 100)
        assert at_mid == 100 or (start > 100 and at_mid == start)
        # ListOffsets v0 (Kafka's legacy offset list): for latest the end and
        # then each kept segment's base offset, newest first, at most max_num
        bases = sorted(int(f.name[:20]) for f in (log.data / "ret-0").glob("*.log"))
        assert bases[0] == start and len(bases) >= 3
        expect_latest = [end] + [b for b in reversed(bases) if b != end]
        assert list_offsets_v0(log, "ret", -1, 100) == expect_latest
        assert list_offsets_v0(log, "ret", -1, 2) == expect_latest[:2]
        assert list_offsets_v0(log, "ret", -1, 0) == []
        assert list_offsets_v0(log, "ret", -2, 100) == [start]
    finally:
        log.stop()


def test_committed_offsets_and_compressed_batches_survive_a_restart(tmp_path):
    log = Log(tmp_path)
    data = log.data
    # gzip batches from librdkafka are stored as received and read back by kafka-python
    r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", "zip", "-z", "gzip"],
                       input="".join(f"z{i}\n" for i in range(100)), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code = f"""
from kafka import KafkaConsumer, TopicPartition, OffsetAndMetadata
c = KafkaConsumer(bootstrap_servers="{log.bootstrap}", group_id="keep",
                  enable_auto_commit=False, auto_offset_reset="earliest",
                  consumer_timeout_ms=5000)
c.subscribe(["zip"])
vals = []
for m in c:
    vals.append(m.value.decode())
    if len(vals) == 60:
        break
c.commit({{TopicPartition("zip", 0): OffsetAndMetadata(60, "half")}})
c.close()
print(",".join(vals))
"""
    r = run_py(code, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ",".join(f"z{i}" for i in range(60))
    log.stop()
    log2 = Log(tmp_path, data=data, name="log2")
    try:
        code = f"""
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers="{log2.bootstrap}", group_id="keep",
                  enable_auto_commit=False)
tp = TopicPartition("zip", 0)
print(c.committed(tp))
c.close()
"""
        r = run_py(code, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == "60"
        # and an offset beyond the end is OFFSET_OUT_OF_RANGE: the client resets to the end
        r = subprocess.run(["kcat", "-C", "-b", log2.bootstrap, "-t", "zip", "-o", "500", "-e",
                            "-X", "auto.offset.reset=error"], capture_output=True, text=True,
                           timeout=30)
        assert "out of range" in (r.stderr + r.stdout).lower(), r.stderr
    finally:
        log2.stop()



def kcat_put(log, topic, lines):
    r = subprocess.run(["kcat", "-P", "-b", log.bootstrap, "-t", topic],
                       input="".join(f"{v}\n" for v in lines), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def kcat_all(log, topic):
    """Every record of partition 0 from the beginning, as [value, offset]."""
    r = subprocess.run(["kcat", "-C", "-b", log.bootstrap, "-t", topic, "-p", "0", "-o",
                        "beginning", "-e", "-f", "%s %o\\n"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return [line.split() for line in r.stdout.splitlines()]


def delete_topic(boot, name):
    r = run_py(f"""
from kafka.admin import KafkaAdminClient
a = KafkaAdminClient(bootstrap_servers="{boot}")
a.delete_topics(["{name}"], timeout_ms=10000)
a.close()
""")
    assert r.returncode == 0, r.stderr[-2000:]


def test_deleted_topic_data_never_comes_back_under_a_new_topic(tmp_path):
    log = Log(tmp_path)
    data = log.data
    try:
        kcat_put(log, "t1", [f"old{i}" for i in range(10)])
        assert len(kcat_all(log, "t1")) == 10
    finally:
        log.stop()
    # what a crash in the middle of a delete leaves: a tombstone, and (a
    # delete that unlinked the definition first) an orphan partition
    # directory full of the old batches
    tomb = data / "t1-0.0000000000000abc0001-delete"
    shutil.copytree(data / "t1-0", tomb)
    (data / "t1.topic").unlink()
    log2 = Log(tmp_path, data=data, name="log2")
    try:
        assert not tomb.exists()  # removed at startup
        kcat_put(log2, "t1", ["fresh"])  # auto-created: starts empty at offset 0
        assert kcat_all(log2, "t1") == [["fresh", "0"]]
        # a normal delete leaves nothing behind; the recreated topic starts empty
        delete_topic(log2.bootstrap, "t1")
        left = sorted(p.name for p in data.iterdir() if p.name.startswith("t1"))
        assert left == [], left
        kcat_put(log2, "t1", ["again"])
        assert kcat_all(log2, "t1") == [["again", "0"]]
    finally:
        log2.stop()


IDEMPOTENT = r"""
import sys, time
from confluent_kafka import Producer
boot, n = sys.argv[1], int(sys.argv[2])
errors = []
def cb(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        print("ack", msg.value().decode(), flush=True)
p = Producer({"bootstrap.servers": boot, "enable.idempotence": True, "acks": "all",
              "linger.ms": 2, "message.timeout.ms": 60000,
              "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 200})
for i in range(n):
    while True:
        try:
            p.produce("idem", value=str(i).encode(), callback=cb)
            break
        except BufferError:
            p.poll(0.05)
    p.poll(0)
    time.sleep(0.0005)
p.flush(60)
print("errors", len(errors), errors[:3], flush=True)
"""


def test_idempotent_producer_survives_a_broker_restart_without_duplicates(tmp_path):
    log = Log(tmp_path)
    port, data = log.port, log.data
    prod = subprocess.Popen(["/usr/bin/python3", "-c", IDEMPOTENT, log.bootstrap, "6000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    tail = []

    def read():
        for line in prod.stdout:
            if line.startswith("ack "):
                acked.append(int(line.split()[1]))
            else:
                tail.append(line)
    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_until(lambda: len(acked) > 1000, timeout=60, interval=0.1, what="acks before the kill")
    log.kill()  # SIGKILL
    time.sleep(0.5)
    log2 = Log(tmp_path, data=data, name="log2", port=port)  # same address: the producer retries
    try:
        prod.wait(timeout=120)
        t.join(timeout=10)
        assert tail and tail[-1].startswith("errors 0"), (tail, prod.stderr.read()[-2000:])
        assert sorted(acked) == list(range(6000))
        code = f"""
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers="{log2.bootstrap}", consumer_timeout_ms=5000,
                  auto_offset_reset="earliest")
tp = TopicPartition("idem", 0)
c.assign([tp]); c.seek_to_beginning(tp)
print(",".join(m.value.decode() for m in c))
"""
        r = run_py(code, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        vals = [int(v) for v in r.stdout.strip().split(",")]
        assert vals == list(range(6000))  # every record once, in order: no duplicate, no gap
    finally:
        log2.stop()


PRODUCE_ALL = r"""
import json, sys, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "acks": "all", "retries": 0,
              "enable.idempotence": False, "linger.ms": 0, "message.timeout.ms": 20000})
out = []
def done(err, msg):
    out.append(None if err is None else err.name())
t0 = time.monotonic()
p.produce(sys.argv[2], b"v", callback=done)
p.flush(30)
print(json.dumps({"results": out, "secs": time.monotonic() - t0}))
"""


def test_failed_fdatasync_answers_waiting_appends_at_once(tmp_path):
    """A disk that fails an fdatasync: the acks=all produce and the streams
    append waiting for it are answered at once (KAFKA_STORAGE_ERROR, 503)
    instead of waiting for a flush that will never succeed, later ones are
    refused, and after a restart everything acknowledged before is there."""
    import requests
    flag, env = failing_fdatasync(tmp_path)
    lg = Log(tmp_path, http=True, env=env)
    try:
        def produce(topic):
            r = run_py(PRODUCE_ALL.replace("sys.argv[1]", repr(lg.bootstrap))
                       .replace("sys.argv[2]", repr(topic)), timeout=60)
            assert r.returncode == 0, r.stderr[-2000:]
            return json.loads(r.stdout.strip().splitlines()[-1])
        assert produce("disk")["results"] == [None]
        ok = requests.post(f"{lg.url}/streams/acct-1",
                           json={"events": [{"id": "e1", "type": "Opened", "data": {}}]},
                           timeout=10)
        assert ok.status_code == 200, ok.text
        flag.touch()
        got = produce("disk")
        assert got["results"] == ["KAFKA_STORAGE_ERROR"], got
        assert got["secs"] < 10, got  # answered, not timed out (20 s)
        t0 = time.monotonic()
        r = requests.post(f"{lg.url}/streams/acct-1",
                          json={"events": [{"id": "e2", "type": "Deposited", "data": {}}]},
                          timeout=15)
        assert r.status_code == 503, r.text
        assert "disk write failed" in r.json()["error"], r.text
        assert time.monotonic() - t0 < 10
        # refused from now on, even with the disk back, until a restart
        flag.unlink()
        assert produce("disk")["results"] == ["KAFKA_STORAGE_ERROR"]
        r = requests.post(f"{lg.url}/streams/acct-1",
                          json={"events": [{"id": "e3", "type": "Deposited", "data": {}}]},
                          timeout=15)
        assert r.status_code == 503, r.text
        assert "fdatasync failed" in lg.stderr
    finally:
        lg.stop()
    lg = Log(tmp_path, data=lg.data, http=True)
    try:
        r = requests.get(f"{lg.url}/streams/acct-1", timeout=10)
        assert r.status_code == 200, r.text
        assert [e["id"] for e in r.json()["events"]][:1] == ["e1"]
        r = subprocess.run(["kcat", "-C", "-b", lg.bootstrap, "-t", "disk", "-e", "-o",
                            "beginning", "-f", "%o\\n"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:1] == ["0"]
    finally:
        lg.stop()
