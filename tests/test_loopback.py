"""Loopback only: the conftest guard refuses connections beyond 127.0.0.0/8, ::1 and localhost (sending
nothing), fails a test that swallowed the refusal, and every child process gets the loopback settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LOOPBACK_ENV, PROJECT_ROOT, NonLoopbackConnection, is_loopback

ELSEWHERE = ("10.255.255.1", 9)  # a private address no test may reach; the guard refuses before any packet


@pytest.mark.parametrize(
    ("family", "address", "allowed"),
    [
        (socket.AF_INET, ("127.0.0.1", 80), True),
        (socket.AF_INET, ("127.8.9.10", 80), True),
        (socket.AF_INET, ("localhost", 80), True),
        (socket.AF_INET6, ("::1", 80, 0, 0), True),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0), True),
        (socket.AF_UNIX, "/tmp/some.sock", True),
        (socket.AF_INET, ELSEWHERE, False),
        (socket.AF_INET, ("0.0.0.0", 80), False),
        (socket.AF_INET, ("192.168.1.1", 80), False),
        (socket.AF_INET, ("example.org", 80), False),
        (socket.AF_INET6, ("2001:db8::1", 80, 0, 0), False),
        (socket.AF_INET6, ("::ffff:10.0.0.1", 80, 0, 0), False),
    ],
)
def test_what_counts_as_loopback(family, address, allowed):
    assert is_loopback(family, address) is allowed


def test_connect_connect_ex_and_create_connection_elsewhere_are_refused_before_sending(loopback_only):
    for attempt in (
        lambda s: s.connect(ELSEWHERE),
        lambda s: s.connect_ex(ELSEWHERE),
    ):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.01)  # were the guard absent, the test would not hang on that address
            with pytest.raises(NonLoopbackConnection, match=r"connection to \('10\.255\.255\.1', 9\)"):
                attempt(sock)
            with pytest.raises(OSError):  # never connected: nothing was sent
                sock.getpeername()
    with pytest.raises(NonLoopbackConnection, match="example.org"):
        socket.create_connection(("example.org", 80), timeout=0.01)
    assert len(loopback_only.attempts) == 3
    loopback_only.attempts.clear()  # made on purpose here: any other test fails on them


def test_loopback_and_unix_sockets_pass(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)  # the backlog takes the three connections: no accept needed
        port = server.getsockname()[1]
        with socket.socket() as a:
            a.connect(("127.0.0.1", port))
        with socket.socket() as b:
            assert b.connect_ex(("127.0.0.1", port)) == 0
        socket.create_connection(("localhost", port), timeout=5).close()
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)


def test_the_guard_fails_a_test_that_swallows_the_refusal(pytester):
    """A test that catches every exception around a connection elsewhere still fails, as does one whose
    fixture made the attempt; a test on the loopback passes."""
    pytester.makeconftest((PROJECT_ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import socket
        import pytest

        def test_swallows():
            try:
                socket.create_connection(("10.255.255.1", 9), timeout=0.01)
            except Exception:
                pass

        @pytest.fixture
        def reaches_out():
            with socket.socket() as s:
                try:
                    s.connect(("10.255.255.1", 9))
                except Exception:
                    pass

        def test_fixture_reaches_out(reaches_out):
            pass

        def test_loopback_is_fine():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*connection(s) outside the loopback attempted: ('10.255.255.1', 9)*"])


def test_child_processes_get_the_loopback_settings():
    assert {k: os.environ[k] for k in LOOPBACK_ENV} == LOOPBACK_ENV
    code = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {sorted(LOOPBACK_ENV)}}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == LOOPBACK_ENV
    if sys.platform.startswith("linux"):
        assert Path("/sys/class/net", LOOPBACK_ENV["GLOO_SOCKET_IFNAME"]).exists()


def test_training_on_one_machine_rendezvous_on_the_loopback(monkeypatch):
    """torch's launcher hands the workers ``socket.getfqdn()`` as MASTER_ADDR unless told an address: one
    machine's processes meet on 127.0.0.1; several machines keep the endpoint they were given."""
    import torch.distributed.launcher.api as launcher

    from naic_seg.core.labels import ClassTable
    from naic_seg.core.training.launch import launch

    configs = []

    def fake_launch(config, entrypoint):
        configs.append(config)
        return lambda *args: {0: "rank 0's result"}

    monkeypatch.setattr(launcher, "elastic_launch", fake_launch)
    assert launch(2, {}, None, [], [], ClassTable.naic()) == "rank 0's result"
    assert (configs[0].rdzv_endpoint, configs[0].local_addr) == ("127.0.0.1:0", "127.0.0.1")
    launch(2, {}, None, [], [], ClassTable.naic(), nnodes=2, rdzv_endpoint="node0:29400", run_id="r")
    assert (configs[1].rdzv_endpoint, configs[1].local_addr) == ("node0:29400", None)
