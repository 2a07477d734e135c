"""Pytest plugin: a real MongoDB-wire server for the store tests, and the ``store_url`` fixture over both backends.

``mongodb_url`` (session): ``$AFFCONS_TEST_MONGODB_URL`` when set (a real MongoDB), else an ``nx-27017`` server
(pure-Python MongoDB-wire server on SQLite, from the test extras) started on a free port with its data in a temporary
directory, stopped by PID at the end. If neither works, the tests that use it FAIL with instructions; nothing is
skipped. nx-27017 proves protocol-level correctness of the pymongo code, not MongoDB performance.

``store_url`` (per test, parametrized ``sqlite`` / ``mongodb``): a fresh SQLite file or a fresh MongoDB database.
Enable with ``pytest_plugins = ["tests.mongo_server"]`` in ``tests/conftest.py`` or in a test module.
"""

import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pymongo.errors
import pytest

ENV_VAR = "AFFCONS_TEST_MONGODB_URL"
NX_EXECUTABLE = "nx-27017"
START_TIMEOUT_S = 20.0
HOW_TO = (
    f"The MongoDB store tests need a MongoDB-wire server. Either install the test extras "
    f"(pip install -e .[test], which provides {NX_EXECUTABLE} next to the Python executable) or point "
    f"{ENV_VAR} at a running MongoDB, e.g. {ENV_VAR}=mongodb://127.0.0.1:27017/affcons_test?directConnection=true"
)
_database_counter = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_database(url: str, database: str) -> str:
    """``url`` (mongodb://[user@]host[:port][/db][?options]) with its database replaced by ``database``."""
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{database}" + (f"?{query}" if query else "")


def ping(url: str, timeout_ms: int = 3000) -> None:
    """Raise pymongo's error unless a server answers at ``url`` within ``timeout_ms``."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
    finally:
        client.close()


@dataclass
class NxServer:
    """A running nx-27017 process; ``url`` has database ``affcons_test``."""

    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/affcons_test?directConnection=true"

    @property
    def log(self) -> str:
        path = self.directory / "nx.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """Terminate by PID (kill after 10 s); the data directory stays for inspection."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_nx_27017(directory: Path, attempts: int = 3) -> NxServer:
    """Start ``nx-27017`` (found next to ``sys.executable``) on a free port, data and log in ``directory``; wait
    until it answers a ping. A failure is a RuntimeError with the server log and :data:`HOW_TO`."""
    executable = Path(sys.executable).parent / NX_EXECUTABLE
    if not executable.is_file():
        raise RuntimeError(f"{executable} not found. {HOW_TO}")
    directory.mkdir(parents=True, exist_ok=True)
    problem = ""
    for _ in range(attempts):  # another process may take the free port before the server binds it
        port = free_port()
        with open(directory / "nx.stdout", "ab") as output:
            process = subprocess.Popen(
                [
                    str(executable),
                    "--data-dir",
                    str(directory / "data"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-file",
                    str(directory / "nx.log"),
                    "--pid-file",
                    str(directory / "nx.pid"),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = NxServer(process, port, directory)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ping(server.url, timeout_ms=500)
                return server
            except pymongo.errors.PyMongoError as error:
                problem = str(error)[:300]
                time.sleep(0.1)
        server.stop()
        problem = f"exit code {process.returncode}, last error {problem}"
    raise RuntimeError(
        f"{executable} did not start on 127.0.0.1 in {attempts} attempts ({problem}); log:\n{server.log}\n{HOW_TO}"
    )


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory):
    """URL of a MongoDB-wire server for this session: ``$AFFCONS_TEST_MONGODB_URL`` or a fresh nx-27017."""
    external = os.environ.get(ENV_VAR)
    if external:
        problem = None
        try:
            ping(external)
        except pymongo.errors.PyMongoError as error:
            problem = str(error).split(", Topology Description")[0]
        if problem is not None:
            pytest.fail(f"{ENV_VAR}={external} does not answer: {problem}. {HOW_TO}", pytrace=False)
        yield external
        return
    try:
        server = start_nx_27017(tmp_path_factory.mktemp("nx-27017"))
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "mongodb"])
def store_url(request, tmp_path):
    """A fresh, empty store URL per test: a new SQLite file, or a new database on the ``mongodb_url`` server
    (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rag.db'}"
        return
    server_url = request.getfixturevalue("mongodb_url")
    database = f"affcons_test_{os.getpid()}_{next(_database_counter)}_{uuid.uuid4().hex[:8]}"
    yield with_database(server_url, database)
    client = pymongo.MongoClient(server_url, serverSelectionTimeoutMS=3000)
    try:
        client.drop_database(database)
    finally:
        client.close()


class AuthProxy:
    """A MongoDB-wire endpoint that demands a user name and password (SASL ``PLAIN``) and forwards everything else
    to a real MongoDB-wire server (nx-27017 has no authentication). It records every password it was offered, so a
    test can prove that worker processes on another path received the right one, and it refuses a wrong one
    (``AuthenticationFailed``, code 18), as mongod does. URL: ``mongodb://USER:PASSWORD@127.0.0.1:PORT/db
    ?directConnection=true&authMechanism=PLAIN``."""

    OP_MSG = 2013

    def __init__(self, upstream_port: int, user: str, password: str):
        import threading

        self.upstream_port = upstream_port
        self.user, self.password = user, password
        self.offered: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, database: str, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return (
            f"mongodb://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"
            "?directConnection=true&authMechanism=PLAIN&authSource=$external"
        )

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read_message(connection) -> bytes | None:
        header = b""
        while len(header) < 16:
            piece = connection.recv(16 - len(header))
            if not piece:
                return None
            header += piece
        length = int.from_bytes(header[:4], "little")
        body = b""
        while len(body) < length - 16:
            piece = connection.recv(length - 16 - len(body))
            if not piece:
                return None
            body += piece
        return header + body

    def _reply(self, request: bytes, document: dict) -> bytes:
        import bson

        payload = (0).to_bytes(4, "little") + b"\x00" + bson.encode(document)
        request_id = int.from_bytes(request[4:8], "little")
        header = (16 + len(payload)).to_bytes(4, "little") + (0).to_bytes(4, "little")
        return header + request_id.to_bytes(4, "little") + self.OP_MSG.to_bytes(4, "little") + payload

    def _answer(self, message: bytes) -> bytes | None:
        """Our reply to an authentication command, or None to forward the message."""
        import bson

        if int.from_bytes(message[12:16], "little") != self.OP_MSG or message[20] != 0:
            return None
        length = int.from_bytes(message[21:25], "little")
        command = bson.decode(message[21 : 21 + length])
        if "saslStart" not in command:
            return None
        _, user, password = bytes(command["payload"]).split(b"\x00", 2)
        self.offered.append(password.decode())
        if user.decode() == self.user and password.decode() == self.password:
            return self._reply(message, {"conversationId": 1, "done": True, "payload": b"", "ok": 1.0})
        failure = {"ok": 0.0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed"}
        return self._reply(message, failure)

    def _serve(self, client) -> None:
        upstream = None
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            while (message := self._read_message(client)) is not None:
                answer = self._answer(message)
                if answer is None:
                    upstream.sendall(message)
                    answer = self._read_message(upstream)
                    if answer is None:
                        return
                client.sendall(answer)
        except OSError:
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()
