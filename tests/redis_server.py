"""A real redis-server on loopback for tests, that can be killed and restarted.

Import the fixture into a test module (it is named ``redis_server``)::

    from redis_server import RedisServer, redis_server_fixture  # noqa: F401

    def test_something(redis_server: RedisServer) -> None:
        store = RedisStore(redis_server.url)
        ...
        redis_server.kill()      # SIGKILL: the data is gone, the port is closed
        ...
        redis_server.start()     # the same port again, empty

``redis_server`` starts a fresh server per test in ``tmp_path`` (no RDB, no
AOF) and stops it afterwards. Without a ``redis-server`` binary the test is
skipped, unless ``REQUIRE_REDIS_TESTS=1`` (CI), where it fails.

``redis_cluster`` (module-scoped) starts a real 3-master Redis Cluster on
free loopback ports (``redis-server --cluster-enabled yes`` x3, then
``redis-cli --cluster create ... --cluster-yes``); it needs ``redis-cli`` too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "REQUIRE_ENV",
    "RedisCluster",
    "RedisServer",
    "free_port",
    "redis_cluster_fixture",
    "redis_server_binary",
    "redis_server_fixture",
    "start_server",
]

REQUIRE_ENV = "REQUIRE_REDIS_TESTS"


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the test (or fails it when
    ``REQUIRE_REDIS_TESTS=1``) when there is none."""
    path = os.environ.get("CREDITGUARD_REDIS_SERVER") or shutil.which("redis-server")
    if path is None:
        reason = (
            "redis-server not found on PATH (install it, e.g. apt-get install redis-server, "
            "or set CREDITGUARD_REDIS_SERVER)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires the Redis tests to run")
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on ``127.0.0.1:port``, data in ``directory``."""

    def __init__(
        self, binary: str, directory: Path, port: int | None = None, password: str | None = None
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0, extra: tuple[str, ...] = ()) -> None:
        """Start the server on ``self.port`` and wait until it answers PING."""
        if self.running:
            return
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.log),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += extra
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ping():
                return
            time.sleep(0.01)
        self.stop()
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def ping(self) -> bool:
        """True when the server answers PING (raw RESP: no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: connections drop, data is lost."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.kill()
        self.start()


def start_server(directory: Path, password: str | None = None) -> RedisServer:
    """A started server on a free port (retries if the port was taken meanwhile)."""
    binary = redis_server_binary()
    error: RuntimeError | None = None
    for _ in range(3):
        server = RedisServer(binary, directory, password=password)
        try:
            server.start()
        except RuntimeError as exc:
            error = exc
            continue
        return server
    assert error is not None
    raise error


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port for this test."""
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        server.kill()  # no persistence to flush: SIGTERM would only wait for a cron tick


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found on PATH (install redis-server and redis-tools)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires the Redis tests to run")
        pytest.skip(reason)
    return path


class RedisCluster:
    """Three master nodes on loopback, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}/"

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def start_cluster(directory: Path, masters: int = 3) -> RedisCluster:
    """A started cluster of ``masters`` nodes, every slot covered."""
    binary = redis_server_binary()
    cli = _binary("redis-cli")
    nodes: list[RedisServer] = []
    try:
        for i in range(masters):
            node_dir = directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = RedisServer(binary, node_dir)
            node.start(
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "2000",
                    "--cluster-port", str(free_port()),  # (not port + 10000: may be > 65535)
                )
            )  # fmt: skip
            nodes.append(node)
        hosts = [f"127.0.0.1:{node.port}" for node in nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *hosts, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                for node in nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return RedisCluster(nodes)
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok within 30 s")
    except BaseException:
        for node in nodes:
            node.kill()
        raise


@pytest.fixture(name="redis_cluster", scope="module")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster on loopback, shared by a module's tests."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
