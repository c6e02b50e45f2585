"""AUTHENTICATE PLAIN whose answer cannot be read falls back to LOGIN (GNU imap4d's bare-LF success
line); a NO is a refusal and is not retried; an error never quotes a success line as its reason.

A scripted server on 127.0.0.1 stands in for the server's login phase only: the real imap4d is in
tests/e2e (the conformance suite); this pins down each answer's handling exactly."""
from __future__ import annotations

import socket
import threading

import pytest

from migrator.accounts import Endpoint
from migrator.errors import ConnectionFailed
from migrator.stores import imap_connect
from migrator.stores.connection import ConnectOptions, Credentials


class ScriptedLogin:
    """Greets with AUTH=PLAIN; answers AUTHENTICATE with `auth_answer` (a format string for the
    tag) and LOGIN with OK or NO. Records every command line it got."""

    def __init__(self, auth_answer: str, login_ok: bool = True, sasl_ir: bool = True):
        self.auth_answer, self.login_ok = auth_answer, login_ok
        caps = "IMAP4rev1 AUTH=PLAIN" + (" SASL-IR" if sasl_ir else "")
        self.greeting = f"* OK [CAPABILITY {caps}] scripted\r\n".encode()
        self.commands: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(4):  # bounded: at most four connections per test
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self.greeting)
            f = conn.makefile("rb")
            for line in f:
                text = line.decode().rstrip("\r\n")
                tag, _, rest = text.partition(" ")
                verb = rest.split(" ")[0].upper()
                self.commands.append(verb)
                if verb == "AUTHENTICATE":
                    if rest.count(" ") == 1:  # no initial response: send the empty challenge
                        conn.sendall(b"+ \r\n")
                        f.readline()
                    conn.sendall(self.auth_answer.format(tag=tag).encode())
                elif verb == "LOGIN":
                    ok = f"{tag} OK LOGIN done\r\n" if self.login_ok else f"{tag} NO [AUTHENTICATIONFAILED] bad\r\n"
                    conn.sendall(ok.encode())
                elif verb == "CAPABILITY":
                    conn.sendall(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
                elif verb == "LOGOUT":
                    conn.sendall(f"* BYE\r\n{tag} OK bye\r\n".encode())
                    break
                else:
                    conn.sendall(f"{tag} BAD unknown\r\n".encode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(autouse=True)
def _fresh_memory():
    imap_connect._login_only.clear()
    yield
    imap_connect._login_only.clear()


def _connect(server: ScriptedLogin):
    ep = Endpoint("imap", "alice", "127.0.0.1", server.port)
    return imap_connect.connect(ep, Credentials(password=lambda: "s3cret"), ConnectOptions(timeout=5))


@pytest.mark.parametrize("sasl_ir", [True, False])
def test_bare_lf_success_line_falls_back_to_login(sasl_ir):
    server = ScriptedLogin("{tag} OK AUTHENTICATE PLAIN authentication successful\n", sasl_ir=sasl_ir)
    try:
        wire = _connect(server)
        assert wire.client._imap.state == "AUTH"
        assert server.commands.count("AUTHENTICATE") == 1 and server.commands[-1] == "LOGIN"
        # The run's next connection goes straight to LOGIN.
        _connect(server)
        assert server.commands.count("AUTHENTICATE") == 1 and server.commands.count("LOGIN") == 2
    finally:
        server.close()


def test_bad_to_authenticate_falls_back_to_login():
    server = ScriptedLogin("{tag} BAD mechanism broken\r\n")
    try:
        _connect(server)
        assert server.commands[-1] == "LOGIN"
    finally:
        server.close()


def test_no_to_authenticate_is_a_refusal_not_retried():
    server = ScriptedLogin("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    try:
        with pytest.raises(ConnectionFailed) as e:
            _connect(server)
        assert "AUTHENTICATIONFAILED" in str(e.value)
        assert "LOGIN" not in server.commands
    finally:
        server.close()


def test_login_refused_after_fallback_never_quotes_the_success_line():
    server = ScriptedLogin("{tag} OK AUTHENTICATE PLAIN authentication successful\n", login_ok=False)
    try:
        with pytest.raises(ConnectionFailed) as e:
            _connect(server)
        assert "successful" not in str(e.value)
        assert "AUTHENTICATIONFAILED" in str(e.value)
    finally:
        server.close()
