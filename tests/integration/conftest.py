"""Fixtures for the weft integration tests.

`weft` is a factory: weft(*extra_args, config=YAML_TEXT, workers=N) starts
`weft hello` on 127.0.0.1:0 (unless the args or config choose the address),
waits (bounded) for the listening line (logfmt or JSON) and a served
/health, and returns a weftutil.Weft with .port/.url/.proc/.pid/.stderr. At
teardown every process still running gets SIGTERM; each must exit 0 within
the bound and its stderr must hold no sanitizer report (svcutil.stop_all).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import weftutil  # noqa: E402
from svcutil import stop_all  # noqa: E402


def pytest_configure(config):
    if not os.access(weftutil.WEFT_BIN, os.X_OK):
        raise pytest.UsageError(f"weft binary not found at {weftutil.WEFT_BIN} "
                                "(build it or set WEFT_BIN)")


class _Factory:
    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.started = []
        self.nconf = 0

    def write_config(self, text):
        self.nconf += 1
        p = os.path.join(self.tmpdir, f"weft-{self.nconf}.yaml")
        with open(p, "w") as f:
            f.write(text)
        return p

    def __call__(self, *args, config=None, workers=2, listen="127.0.0.1:0",
                 expect_listen_line=True, port=None, extra_env=None):
        argv = []
        if config is not None:
            argv += ["-c", self.write_config(config)]
        if listen is not None:
            argv += ["--listen", listen]
        if workers is not None:
            argv += ["--workers", str(workers)]
        argv += list(args)
        w = weftutil.Weft(argv, self.tmpdir, expect_listen_line=expect_listen_line, port=port,
                          extra_env=extra_env)
        self.started.append(w)
        return w

    def teardown(self):
        stop_all(self.started)


@pytest.fixture
def weft(tmp_path):
    f = _Factory(str(tmp_path))
    yield f
    f.teardown()


@pytest.fixture(scope="module")
def shared_weft(tmp_path_factory):
    """One server (2 workers, default limits) shared by a module's tests."""
    f = _Factory(str(tmp_path_factory.mktemp("weft")))
    w = f()
    yield w
    f.teardown()
