"""Shared helpers for Weft's side-by-side benchmarks.

Every server under test runs in its own cgroup with the same CPU quota so
that requests/s measures the server, not the load generator (the machines
have 2 cores; wrk alone can saturate one). CPU time per request is read
from /proc/PID/stat (utime+stime of all threads) around each run, so it is
valid whether or not the cap binds. Rounds alternate between servers and
the median is reported, because the machines are noisy.
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class CpuCap:
    """A cgroup (v1 cpu controller or v2 cpu.max) with a CPU quota."""

    def __init__(self, name, percent):
        self.name = name
        self.percent = percent
        self.path = None
        v1 = "/sys/fs/cgroup/cpu"
        v2 = "/sys/fs/cgroup"
        # A short CFS period keeps throttling stalls (and so their effect on
        # p99) small: the quota is handed out every 10 ms, not every 100 ms.
        period = 10000
        quota = int(period * percent / 100)
        try:
            if os.path.isdir(v1) and os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")):
                self.path = os.path.join(v1, name)
                os.makedirs(self.path, exist_ok=True)
                with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as f:
                    f.write(str(period))
                with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
                    f.write(str(quota))
            elif os.path.exists(os.path.join(v2, "cgroup.controllers")):
                self.path = os.path.join(v2, name)
                os.makedirs(self.path, exist_ok=True)
                with open(os.path.join(self.path, "cpu.max"), "w") as f:
                    f.write(f"{quota} {period}")
        except OSError as e:
            print(f"  (no CPU cap: {e})")
            self.path = None

    def add(self, pid):
        if not self.path:
            return False
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        return True

    def remove(self):
        if not self.path:
            return
        # move anything left back to the root, then remove
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = [p for p in f.read().split() if p]
            root = os.path.dirname(self.path)
            for p in pids:
                try:
                    with open(os.path.join(root, "cgroup.procs"), "w") as f:
                        f.write(p)
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError:
            pass


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, host="127.0.0.1", timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


# BENCH_PIN=1: servers under test on CPU 1, load generator and origins on
# CPU 0, so every server gets the same placement in every round
PIN = os.environ.get("BENCH_PIN") == "1" and (os.cpu_count() or 1) >= 2
SERVER_CPUS, LOAD_CPUS = {1}, {0}


def pin(pid, cpus):
    """Set the CPU affinity of every thread of pid (no-op unless PIN)."""
    if not PIN:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def run_wrk(url, conns=64, threads=1, secs=5, script=None):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", script]
    if PIN:
        cmd[0:0] = ["taskset", "-c", ",".join(map(str, sorted(LOAD_CPUS)))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30).stdout
    res = {"raw": out}
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        res[f"p{q}"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


class Server:
    """A process under test, optionally inside a CPU-capped cgroup."""

    def __init__(self, name, argv, port, cap_percent=None, pid_of=None, env=None):
        self.name = name
        self.argv = argv
        self.port = port
        self.cap = CpuCap(f"weft-bench-{name}", cap_percent) if cap_percent else None
        self.pid_of = pid_of  # callable returning the PID to measure (e.g. nginx worker)
        self.env = env
        self.proc = None
        self.pid = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        wait_port(self.port)
        time.sleep(0.3)
        self.pid = self.pid_of() if self.pid_of else self.proc.pid
        if self.cap:
            # cap the whole process group (nginx master + worker)
            for pid in pids_in_session(self.proc.pid):
                self.cap.add(pid)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.cap:
            self.cap.remove()


def pids_in_session(sid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
            fields = data[data.rindex(")") + 2:].split()
            if int(fields[3]) == sid:  # session id
                out.append(int(d))
        except (OSError, ValueError):
            pass
    return out


def measure(server, url, conns, secs, threads=1):
    if server.proc:
        for pid in pids_in_session(server.proc.pid):
            pin(pid, SERVER_CPUS)
    t0 = cpu_ticks(server.pid)
    res = run_wrk(url, conns=conns, secs=secs, threads=threads)
    t1 = cpu_ticks(server.pid)
    cpu_s = (t1 - t0) / CLK_TCK
    res["cpu_us_per_req"] = cpu_s * 1e6 / res["requests"] if res["requests"] else float("nan")
    res["cpu_util"] = cpu_s / secs
    res["rss_kb"] = rss_kb(server.pid)
    return res


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def have(cmd):
    return shutil.which(cmd) is not None


def nginx_worker(master_pid, tries=50):
    """PID of the (single) worker of an nginx master: the process to measure."""
    for _ in range(tries):
        out = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True,
                             text=True).stdout.split()
        if out:
            return int(out[0])
        time.sleep(0.1)
    raise RuntimeError("nginx worker not found")
