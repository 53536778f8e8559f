"""weft registry --data: kill -9 during a registration loop loses no
acknowledged change; a torn journal tail keeps exactly a prefix; leases
resume after a restart; a restart keeps the revision."""
import os
import random
import subprocess
import threading
import time

from svcutil import Registry as SvcRegistry

WEFT_BIN = os.environ.get("WEFT_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "asan", "weft")


def Registry(data, tmp_path):  # noqa: N802 (the tests' existing spelling)
    return SvcRegistry(tmp_path, "--data", str(data))


def body(i, ttl=None):
    b = {"address": f"10.0.{i // 250}.{i % 250}", "port": 8000 + i % 1000, "tags": ["d"]}
    if ttl:
        b["ttl"] = ttl
    return b


def test_kill9_keeps_every_acknowledged_registration(tmp_path):
    data = tmp_path / "data"
    r = Registry(data, tmp_path)
    acked = []
    stop = threading.Event()

    def loop():
        i = 0
        while not stop.is_set() and i < 5000:
            try:
                st, _ = r.req("PUT", f"/v1/services/dur/instances/i{i}", body(i))
            except (OSError, IndexError, ValueError):
                return  # the registry died mid-request (no or cut answer): not acknowledged
            if st == 200:
                acked.append(i)
            i += 1

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(1.0 + random.random())
    r.kill()
    stop.set()
    t.join(10)
    assert len(acked) > 20, "the loop made too little progress to mean anything"
    r2 = Registry(data, tmp_path)
    ids = {inst["id"] for inst in r2.instances("dur")["instances"]}
    missing = [i for i in acked if f"i{i}" not in ids]
    assert not missing, f"{len(missing)} acknowledged registrations lost, e.g. {missing[:5]}"
    # nothing beyond what was attempted, and the journal order means a prefix
    nums = sorted(int(x[1:]) for x in ids)
    assert nums == list(range(len(nums))), "the surviving set is not a prefix"
    assert r2.stop() == 0


def test_torn_tail_keeps_a_prefix_and_restart_keeps_revision(tmp_path):
    data = tmp_path / "data"
    r = Registry(data, tmp_path)
    for i in range(200):
        assert r.req("PUT", f"/v1/services/torn/instances/i{i}", body(i))[0] == 200
    rev = r.instances("torn")["revision"]
    assert r.stop() == 0
    r = Registry(data, tmp_path)
    d = r.instances("torn")
    assert d["revision"] >= rev and len(d["instances"]) == 200
    assert r.stop() == 0
    journal = data / "journal"
    size = journal.stat().st_size
    cut = random.randint(1, 400)
    with open(journal, "r+b") as f:
        f.truncate(size - cut)
    r = Registry(data, tmp_path)
    nums = sorted(int(x["id"][1:]) for x in r.instances("torn")["instances"])
    assert nums == list(range(len(nums))), "not a prefix after a torn tail"
    assert 190 <= len(nums) < 200, (cut, len(nums))
    log = r.text()
    assert "torn tail cut" in log
    # appending after the repair works and survives another restart
    assert r.req("PUT", "/v1/services/torn/instances/after", body(999))[0] == 200
    assert r.stop() == 0
    r = Registry(data, tmp_path)
    assert any(x["id"] == "after" for x in r.instances("torn")["instances"])
    assert r.stop() == 0


def test_leases_resume_after_restart(tmp_path):
    data = tmp_path / "data"
    r = Registry(data, tmp_path)
    assert r.req("PUT", "/v1/services/l/instances/short", body(1, ttl="2s"))[0] == 200
    assert r.req("PUT", "/v1/services/l/instances/long", body(2, ttl="60s"))[0] == 200
    assert r.stop() == 0
    r = Registry(data, tmp_path)
    got = {x["id"]: x for x in r.instances("l")["instances"]}
    assert set(got) == {"short", "long"}
    # restored conservatively: never earlier than the real deadline, at most TTL/2 later
    assert 55_000 <= got["long"]["lease_remaining_ms"] <= 90_500
    # the short lease still runs out without heartbeats (within ttl + ttl/2 + sweep)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "short" not in {x["id"] for x in r.instances("l")["instances"]}:
            break
        time.sleep(0.1)
    ids = {x["id"] for x in r.instances("l")["instances"]}
    assert "short" not in ids and "long" in ids
    assert r.stop() == 0
    # the expiry itself was journaled
    r = Registry(data, tmp_path)
    assert {x["id"] for x in r.instances("l")["instances"]} == {"long"}
    assert r.stop() == 0


def test_bad_data_dir_is_a_clear_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    p = subprocess.run([WEFT_BIN, "registry", "--listen", "127.0.0.1:0", "--data", str(f)],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "cannot open the registry data directory" in p.stderr


def test_mass_expiry_beyond_the_history_is_journaled(tmp_path):
    # a sweep that evicts more instances than the change history holds must
    # still journal every eviction, or a restart brings them back
    data = tmp_path / "data"
    config = "registry:\n  history: 16\n  self_preservation_min: 100000\n"
    r = SvcRegistry(tmp_path, "--data", str(data), config=config)
    for i in range(200):
        assert r.put("mass", f"i{i}", body(i, ttl="1s")) == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and r.instances("mass")["instances"]:
        time.sleep(0.1)
    assert r.instances("mass")["instances"] == []
    rev = r.req("GET", "/v1/services")[1]["revision"]
    assert rev >= 400
    assert r.stop() == 0
    r = SvcRegistry(tmp_path, "--data", str(data), config=config)
    loaded = [ln for ln in r.text().splitlines() if "registry state loaded" in ln]
    assert loaded and "instances=0 " in loaded[-1] + " ", loaded
    assert r.instances("mass")["instances"] == []
    assert r.req("GET", "/v1/services")[1]["revision"] >= rev, "the revision went back"
    assert r.stop() == 0
