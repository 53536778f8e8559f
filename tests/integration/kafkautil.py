"""Helpers for the `weft log` tests: start the broker, speak raw Kafka
frames for the bad-input cases, run client programs in subprocesses."""
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from svcutil import WEFT_BIN, Proc


class Log(Proc):
    """A running `weft log` on a free loopback port; with http=True also the
    streams API (`--http`) on another one: http_port and url."""

    def __init__(self, workdir, data=None, extra=(), name="log", http=False, port=0, env=None):
        self.data = Path(data or Path(workdir) / "data")
        more = ["--http", "127.0.0.1:0"] if http else []
        super().__init__([WEFT_BIN, "log", "--listen", f"127.0.0.1:{port}", "--data", self.data,
                          *more, *extra], workdir, "log", name=name,
                         also=("streams",) if http else (), env=env)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.http_port = self.port_of("streams") if http else None
        self.url = f"http://127.0.0.1:{self.http_port}" if http else None


def frame(api_key, version, corr, body, client=b"raw"):
    head = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = head + body
    return struct.pack(">i", len(msg)) + msg


def exchange(port, payload, timeout=5.0):
    """Send bytes, return (response bytes or b'', closed?)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(payload)
        size = _recv_exact(s, 4)
        if size is None:
            return b"", True
        (n,) = struct.unpack(">i", size)
        body = _recv_exact(s, n)
        return body or b"", body is None
    finally:
        s.close()


def _recv_exact(s, n):
    out = b""
    while len(out) < n:
        try:
            d = s.recv(n - len(out))
        except (ConnectionResetError, socket.timeout):
            return None
        if not d:
            return None
        out += d
    return out


def kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def run_py(code, timeout=60, **kw):
    """Run a Python client program (Debian's interpreter and packages)."""
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                          timeout=timeout, **kw)


def wait_port_closed(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


PY = sys.executable


# An LD_PRELOAD shim: fdatasync fails with EIO while the flag file exists,
# the way a failing disk makes it fail (the kernel's own error path).
FAIL_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int fdatasync(int fd)
{
    const char *flag = getenv("WEFT_TEST_FAIL_FDATASYNC");
    if (flag && access(flag, F_OK) == 0) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}
"""


# Another shim: pwrite fails with ENOSPC while the flag file exists, for
# files whose path contains WEFT_TEST_FAIL_WRITES_IN (one topic's
# directory, say), the way a full disk makes a write fail.
WRITE_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static int failing(int fd)
{
    const char *flag = getenv("WEFT_TEST_FAIL_WRITES"), *in = getenv("WEFT_TEST_FAIL_WRITES_IN");
    if (!flag || !in || access(flag, F_OK) != 0)
        return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return 0;
    path[n] = 0;
    return strstr(path, in) != NULL;
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (failing(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return syscall(SYS_pwrite64, fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return pwrite(fd, buf, n, off); }
"""


def _shim_env(tmp_path, name, source, env):
    """Build an LD_PRELOAD shim from source; return (flag path, env for
    Log(env=...)) with the flag's path under the variable named env[0]."""
    shim = Path(tmp_path) / f"{name}.so"
    src = Path(tmp_path) / f"{name}.c"
    src.write_text(source)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(src)], check=True)
    flag = Path(tmp_path) / f"{name}-now"
    return flag, {"LD_PRELOAD": str(shim), env[0]: str(flag), **env[1],
                  # the shim comes before the sanitizer runtime in the load order
                  "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:verify_asan_link_order=0"}


def failing_writes(tmp_path, path_part):
    """(flag, env): while the flag file exists, pwrite to files whose path
    contains path_part fails with ENOSPC."""
    return _shim_env(tmp_path, "failwrite", WRITE_SHIM,
                     ("WEFT_TEST_FAIL_WRITES", {"WEFT_TEST_FAIL_WRITES_IN": path_part}))


def failing_fdatasync(tmp_path):
    """(flag, env): while the flag file exists, the broker's fdatasync calls
    fail with EIO."""
    return _shim_env(tmp_path, "failsync", FAIL_SHIM, ("WEFT_TEST_FAIL_FDATASYNC", {}))
