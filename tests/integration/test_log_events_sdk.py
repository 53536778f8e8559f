"""weft/events.h through the accounts example: event-sourcing commands
from several processes race on one stream (optimistic concurrency, retry
on conflict, exactly-once deposits), and a consumer-group projection built
from the Kafka category topic with the SDK's librdkafka consumer."""
import json
import subprocess

from kafkautil import Log
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
