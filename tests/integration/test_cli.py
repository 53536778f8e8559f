"""The `weft` command line: subcommands, help, config file and flags."""
import json
import re

import svcutil
import weftutil
from weftutil import get, run_weft


def test_version():
    for arg in ("version", "--version"):
        p = run_weft(arg)
        assert p.returncode == 0, p.stderr
        assert re.fullmatch(r"weft \d+\.\d+\.\d+\n", p.stdout), p.stdout
        assert p.stderr == ""


def test_help_lists_commands():
    p = run_weft("help")
    assert p.returncode == 0
    assert p.stdout.startswith("weft ")
    assert re.search(r"^  hello\s+\S", p.stdout, re.M), p.stdout
    assert re.search(r"^  version\s+print the version", p.stdout, re.M), p.stdout
    assert "--listen HOST:PORT" in p.stdout


def test_help_hello():
    p = run_weft("help", "hello")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: weft hello")
    for flag in ("--listen HOST:PORT", "--workers N", "-c FILE", "--log-level", "--log-format"):
        assert flag in p.stdout, flag
    # `weft hello --help` prints the same text and exits 0 without serving
    q = run_weft("hello", "--help")
    assert q.returncode == 0
    assert q.stdout == p.stdout


def test_unknown_command_and_usage_errors():
    p = run_weft("frobnicate")
    assert p.returncode == 2
    assert p.stderr.startswith("weft: unknown command 'frobnicate'\n"), p.stderr
    assert p.stdout == ""

    p = run_weft("help", "frobnicate")
    assert p.returncode == 2
    assert p.stderr == "weft: no such command 'frobnicate'\n"

    p = run_weft()
    assert p.returncode == 2
    assert "usage: weft <command>" in p.stderr

    p = run_weft("hello", "--bogus")
    assert p.returncode == 2
    assert p.stderr == "weft hello: unknown option '--bogus' (see 'weft help hello')\n"

    p = run_weft("hello", "--workers")
    assert p.returncode == 2
    assert p.stderr == "weft hello: option '--workers' needs a value\n"

    p = run_weft("hello", "--workers", "lots")
    assert p.returncode == 2
    assert "--workers must be 0..256" in p.stderr

    p = run_weft("hello", "--log-level", "loud")
    assert p.returncode == 2
    assert "--log-level must be debug, info, warn, error or off" in p.stderr

    p = run_weft("hello", "--listen", "nonsense", "--workers", "1")
    assert p.returncode == 2
    assert p.stderr.strip().endswith("bad listen address 'nonsense' (want HOST:PORT)"), p.stderr


def test_config_sets_workers_and_listen(weft):
    w = weft(config="listen: 127.0.0.1:0\nworkers: 3\n", listen=None, workers=None)
    lines = [ln for ln in w.stderr.splitlines() if "msg=listening" in ln]
    assert len(lines) == 1, w.stderr
    assert " workers=3 " in lines[0], lines[0]
    assert f"addr=127.0.0.1:{w.port} " in lines[0]
    assert " service=hello " in lines[0] and lines[0].startswith("ts=")
    assert " level=info " in lines[0]
    r = get(w.port, "/hello")
    assert (r.status, r.body) == (200, b'{"msg":"hi"}')


def test_config_listen_list(weft):
    w = weft(config="listen:\n  - 127.0.0.1:0\n  - 127.0.0.1:0\nworkers: 1\n", listen=None,
             workers=None)
    # one listening line per address; the start-up wait returns at the first
    def addresses():
        return [(h, p) for s, h, p in svcutil.listening(w.stderr) if s == "hello"]
    svcutil.wait_until(lambda: len(addresses()) >= 2, timeout=5, what="second listening line")
    assert len(addresses()) == 2, w.stderr
    ports = {p for _, p in addresses()}
    assert len(ports) == 2
    for p in ports:
        r = get(p, "/health")
        assert (r.status, r.body) == (200, b'{"status":"UP"}')


def test_flags_override_file(weft):
    # the file asks for 1 worker, quiet logs and a listen address that is
    # not ours; the flags win on each
    taken = weftutil.free_port()
    cfg = f"listen: 127.0.0.1:{taken}\nworkers: 1\nlog:\n  level: error\n"
    w = weft("--log-level", "info", "--workers", "2", config=cfg, workers=None)
    line = next(ln for ln in w.stderr.splitlines() if "msg=listening" in ln)
    assert " workers=2 " in line, line
    assert w.port != taken
    assert get(w.port, "/hello").status == 200


def test_file_log_level_applies_without_flag(weft):
    # log.level: error in the file silences the info listening line
    port = weftutil.free_port()
    w = weft(config="workers: 1\nlog:\n  level: error\n", listen=f"127.0.0.1:{port}",
             workers=None, expect_listen_line=False, port=port)
    assert get(port, "/hello").status == 200
    assert "listening" not in w.stderr
    w.stop()
    assert w.stderr == "", w.stderr  # not even "stopped" at level error


def test_unknown_key_is_an_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    text = "workers: 1\nhttp:\n  max_body: 1MiB\n  header_timout: 1s\n"
    cfg.write_text(text)
    # line/col (1-based) of the misspelt key
    lines = text.splitlines()
    ln = next(i for i, s in enumerate(lines) if "header_timout" in s) + 1
    col = lines[ln - 1].index("header_timout") + 1
    p = run_weft("hello", "-c", str(cfg), "--listen", "127.0.0.1:0")
    assert p.returncode == 2
    assert p.stderr == f"weft hello: {cfg}:{ln}:{col}: http.header_timout: unknown key\n"

    top = tmp_path / "top.yaml"
    top.write_text("workers: 1\nlisten: 127.0.0.1:0\nfoo: bar\n")
    p = run_weft("hello", "-c", str(top))
    assert p.returncode == 2
    assert p.stderr == f"weft hello: {top}:3:1: foo: unknown key\n"


def test_bad_values_name_the_key(tmp_path):
    cases = [
        ("http:\n  header_timeout: 10parsecs\n", "http.header_timeout",
         "expected a duration like 10s or 250ms", 2, 19),
        ("workers: many\n", "workers", None, 1, 10),
        ("log:\n  format: xml\n", "log.format", "expected one of: text, json", 2, 11),
        ("http:\n  max_body: lots\n", "http.max_body", None, 2, 13),
    ]
    for i, (text, key, reason, line, col) in enumerate(cases):
        cfg = tmp_path / f"c{i}.yaml"
        cfg.write_text(text)
        p = run_weft("hello", "-c", str(cfg), "--listen", "127.0.0.1:0")
        assert p.returncode == 2, (text, p.stderr)
        prefix = f"weft hello: {cfg}:{line}:{col}: {key}: "
        assert p.stderr.startswith(prefix), (text, p.stderr)
        if reason:
            assert p.stderr == prefix + reason + "\n"
        assert p.stderr.count("\n") == 1


def test_missing_config_file(tmp_path):
    p = run_weft("hello", "-c", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2
    assert p.stderr.startswith("weft hello: ")
    assert "nope.yaml" in p.stderr


def test_json_log_format(weft):
    w = weft("--log-format", "json")
    first = w.stderr.splitlines()[0]
    o = json.loads(first)
    assert o["msg"] == "listening"
    assert o["level"] == "info"
    assert o["service"] == "hello"
    assert o["addr"] == f"127.0.0.1:{w.port}"
    assert o["workers"] == 2 and isinstance(o["workers"], int)
    assert re.fullmatch(r"\d+\.\d+\.\d+", o["version"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"])
    w.stop()
    for line in w.stderr.splitlines():
        json.loads(line)  # every line stays JSON, through drain and stop
    assert json.loads(w.stderr.splitlines()[-1])["msg"] == "stopped"


def test_bad_listen_in_file_names_its_line(tmp_path):
    # a listen address from the file is checked where it is read, with its
    # file:line, also when --listen overrides it (as workers: is)
    cases = [
        ("listen: nonsense\n", (), 1, 9, "listen", "nonsense"),
        ("listen:\n  - 127.0.0.1:0\n  - 127.0.0.1:http\n", (), 3, 5, "listen[1]",
         "127.0.0.1:http"),
        ("listen: 127.0.0.1:99999\n", ("--listen", "127.0.0.1:0"), 1, 9, "listen",
         "127.0.0.1:99999"),
    ]
    for i, (text, flags, line, col, key, addr) in enumerate(cases):
        cfg = tmp_path / f"l{i}.yaml"
        cfg.write_text(text)
        p = run_weft("hello", "-c", str(cfg), *flags, timeout=10)
        assert p.returncode == 2, (text, p.stderr)
        assert p.stderr == (f"weft hello: {cfg}:{line}:{col}: {key}: "
                            f"bad listen address '{addr}' (want HOST:PORT)\n"), p.stderr


def test_too_many_listen_addresses_in_file(tmp_path):
    # the flag says "too many --listen addresses"; the file must not keep
    # the first 16 and drop the rest silently
    cfg = tmp_path / "many.yaml"
    cfg.write_text("listen:\n" + "  - 127.0.0.1:0\n" * 17)
    p = run_weft("hello", "-c", str(cfg), timeout=10)
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"weft hello: {cfg}:18:5: listen[16]: more than 16 listen addresses\n"


def test_empty_workers_flag_is_an_error():
    # "" is no number: it must not pass as 0 (one worker per CPU)
    for args in (("--workers", ""), ("--workers=",)):
        p = run_weft("hello", *args, "--listen", "127.0.0.1:0", timeout=10)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr == ("weft hello: --workers must be 0..256 (0 = one per CPU)\n"), p.stderr


def test_log_bad_fsync_names_its_line(tmp_path):
    cfg = tmp_path / "log.yaml"
    cfg.write_text("log:\n  fsync: sometimes\n")
    p = run_weft("log", "-c", str(cfg), "--data", str(tmp_path / "d"), "--listen",
                 "127.0.0.1:0", timeout=10)
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"weft log: {cfg}:2:10: log.fsync: expected one of: always, interval\n"



def test_log_http_address_in_file_names_its_line(tmp_path):
    for i, (text, line, col, key) in enumerate([("http: nowhere\n", 1, 7, "http"),
                                                 ("http:\n  listen: nowhere\n", 2, 11,
                                                  "http.listen")]):
        cfg = tmp_path / f"log{i}.yaml"
        cfg.write_text(text)
        p = run_weft("log", "-c", str(cfg), "--data", str(tmp_path / "d"), "--listen",
                     "127.0.0.1:0", timeout=10)
        assert p.returncode == 2, p.stderr
        assert p.stderr == (f"weft log: {cfg}:{line}:{col}: {key}: "
                            "bad listen address 'nowhere' (want HOST:PORT)\n"), p.stderr
