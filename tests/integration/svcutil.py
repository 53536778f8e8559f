"""Start, talk to and stop the real processes of a Weft system: weft
registry, the example services built on the SDK (examples/services), weft
gateway, weft hello, weft log. Proc is the one launcher the other helpers
(weftutil.Weft, gwutil.Gateway, kafkautil.Log, Registry) build on. Every
wait is bounded; stop() fails the test on a sanitizer report or an unclean
exit."""
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from signal import SIGTERM

import pytest

REPO = Path(__file__).resolve().parents[2]
WEFT_BIN = os.environ.get("WEFT_BIN", str(REPO / "build" / "asan" / "weft"))
BIN_DIR = Path(WEFT_BIN).resolve().parent

LISTEN_RE = re.compile(r"msg=listening (?:.*?)service=(\S+) (?:.*?)addr=(\S+):(\d+)")
# in a process's stderr, any of these fails stop(): every sanitizer's report
# ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", ...) and UBSan's
SANITIZER_MARKERS = ("Sanitizer", "runtime error:")


def sanitizer_env():
    env = dict(os.environ)
    # abort_on_error=0 keeps the report on stderr and a non-zero exit code;
    # detect_leaks stays on so a leak fails the exit-code check.
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


def wait_until(pred, timeout=5.0, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or time runs out
    (AssertionError)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")


def listening(text):
    """(service, host, port) of every complete `listening` line (logfmt or
    JSON) in a log, in order."""
    out = []
    for line in text[:text.rfind("\n") + 1].splitlines():
        if line.startswith("{"):
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("msg") == "listening":
                h, p = o["addr"].rsplit(":", 1)
                out.append((o.get("service"), h, int(p)))
        else:
            m = LISTEN_RE.search(line)
            if m:
                out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def http(port, method, path, body=None, headers=None, timeout=5.0):
    """One request on a fresh connection: (status, headers dict, body bytes)."""
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None
                                                  else b"")
    h = {"Host": "t", "Content-Length": str(len(data)), "Connection": "close", **(headers or {})}
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall((f"{method} {path} HTTP/1.1\r\n" +
                   "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + data)
        resp = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            resp += d
    finally:
        s.close()
    head, _, payload = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", payload
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        payload = out
    return int(lines[0].split()[1]), hdrs, payload


def get_json(port, path, headers=None, timeout=5.0):
    st, _, b = http(port, "GET", path, headers=headers, timeout=timeout)
    return st, (json.loads(b) if b else None)


class Exited(RuntimeError):
    """The process ended by itself before it was serving."""


class Proc:
    """A running process that logs `msg=listening service=NAME addr=HOST:PORT`
    (logfmt or JSON) for each listener, stderr in a file under workdir.

    Started means: a listening line for `service` and for every name in
    `also` (none needed when service is None: pass port), then ready(), all
    within start_timeout seconds; else the process is killed and the error
    (Exited if it ended by itself) carries its stderr. host, port, addr and
    url are those of the first `service` line, port_of() any other's."""

    start_timeout = 10.0
    stop_timeout = 15.0

    def __init__(self, argv, workdir, service, name=None, also=(), env=None, port=None):
        self.argv = [str(a) for a in argv]
        self.service = service
        self.stderr_path = Path(workdir) / f"{name or service}-{time.monotonic_ns()}.log"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err,
                                     env={**sanitizer_env(), **(env or {})})
        self.pid = self.proc.pid
        self.listening = []
        deadline = time.monotonic() + self.start_timeout
        want = {service, *also} - {None}

        def listed():
            self.listening = listening(self.text())
            return want <= {s for s, _, _ in self.listening}
        self._until(deadline, listed, "listening")
        self.host, self.port = ("127.0.0.1", port) if service is None else next(
            (h, p) for s, h, p in self.listening if s == service)
        assert self.port, "port unknown"
        self.addr = f"{self.host}:{self.port}"
        self.url = f"http://{self.addr}"
        self._until(deadline, self.ready, "serving")

    def _until(self, deadline, cond, what):
        while True:
            try:
                if cond():
                    return
            except OSError:  # not accepting yet (requests' errors are OSErrors too)
                pass
            if not self.alive():
                self.kill()
                raise Exited(f"{self.argv[0]} exited early ({self.proc.returncode}):\n"
                             f"{self.text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.argv} not {what} within {self.start_timeout}s:\n"
                                   f"{self.text()}")
            time.sleep(0.02)

    def ready(self):
        """Serving (checked once the listening lines are in): override."""
        return True

    def port_of(self, service):
        return next(p for s, _, p in self.listening if s == service)

    def text(self):
        try:
            return self.stderr_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    stderr = property(text)

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        """VmRSS in KiB (None once the process has exited)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None

    def signal(self, sig):
        self.proc.send_signal(sig)  # a no-op once it has exited

    send_signal = signal

    def wait(self, timeout):
        """The exit code, or None if still running after timeout seconds."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._err.close()
        return rc

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.wait(10)
        self._err.close()

    def sanitizer_report(self):
        text = self.text()
        return text if any(m in text for m in SANITIZER_MARKERS) else None

    def stop(self, timeout=None, sig=SIGTERM):
        """Signal (if still running) and wait: the exit code, which must be 0,
        with no sanitizer report in stderr. Killed, and the test failed, if
        it has not exited within timeout (default stop_timeout) seconds."""
        timeout = timeout or self.stop_timeout
        what = f"{Path(self.argv[0]).name} ({self.service or self.argv[1]})"
        self.signal(sig)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"{what} did not exit within {timeout}s of {sig!r}:\n"
                                 f"{self.text()[-4000:]}")
        rep = self.sanitizer_report()
        assert rep is None, f"sanitizer report in {what} stderr:\n{rep[-6000:]}"
        assert rc == 0, f"{what} exited with {rc}:\n{self.text()[-4000:]}"
        return rc


def stop_all(procs, timeout=None):
    """Fixture teardown: stop every process (each must exit 0 without a
    sanitizer report, see Proc.stop) and fail once, naming all that did not."""
    errors = []
    for p in procs:
        try:
            p.stop(timeout)
        except AssertionError as e:  # report every process, not just the first
            errors.append(str(e))
        finally:
            p.kill()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


def registry(workdir, *extra):
    return Proc([WEFT_BIN, "registry", "--listen", "127.0.0.1:0", *extra], workdir, "registry")


def example(name, workdir, registry_port, *extra):
    """One of the example services (examples/services/NAME.c)."""
    return Proc([BIN_DIR / f"weft-example-{name}", "--listen", "127.0.0.1:0", "--registry",
                 f"http://127.0.0.1:{registry_port}", *extra], workdir, name)


def instances(reg, service):
    st, d = get_json(reg.port, f"/v1/services/{service}")
    assert st == 200, d
    return {i["id"]: i for i in d["instances"]}


def metric(port, name, **labels):
    _, _, text = http(port, "GET", "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for ln in text.decode().splitlines():
        if ln.startswith(name + "{" if labels else name) and (not labels or want in ln):
            total += float(ln.rsplit(" ", 1)[1])
    return total


class Registry(Proc):
    """A running `weft registry` (extra flags such as --data DIR; config:
    YAML text for -c), served once /health answers."""

    start_timeout = 20.0

    def __init__(self, workdir, *extra, port=0, config=None, **kw):
        if config is not None:
            cfg = Path(workdir) / f"registry-{time.monotonic_ns()}.yaml"
            cfg.write_text(config)
            extra = ("-c", cfg, *extra)
        super().__init__([WEFT_BIN, "registry", "--listen", f"127.0.0.1:{port}", *extra],
                         workdir, "registry", **kw)

    def ready(self):
        return http(self.port, "GET", "/health", timeout=1)[0] == 200

    def req(self, method, path, body=None):
        """(status, parsed JSON body or None)."""
        st, _, b = http(self.port, method, path, body=body)
        try:
            return st, (json.loads(b) if b else None)
        except ValueError:
            return st, None

    def put(self, service, iid, body):
        return self.req("PUT", f"/v1/services/{service}/instances/{iid}", body)[0]

    def delete(self, service, iid):
        return self.req("DELETE", f"/v1/services/{service}/instances/{iid}")[0]

    def instances(self, service):
        st, d = self.req("GET", f"/v1/services/{service}")
        assert st == 200, d
        return d

    kill9 = Proc.kill  # SIGKILL, the spelling the registry tests use
