"""The webhook POST: one wall-clock deadline however slowly the receiver answers, sent to the checked address."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from core.egress import Target
from core.settings import Settings
from db.webhooks import Delivery
from worker.webhooks import DeadlinePassed, _send, post


class Listener:
    """A TCP (or TLS) server on 127.0.0.2 that records each request's head and answers with `reply(conn)`."""

    def __init__(self, reply, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.2", 0))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_side=True)
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.closed_after: list[float] = []
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except ssl.SSLError:
                continue  # the handshake failed (a client that refused our certificate): serve the next one
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        started = time.monotonic()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            # Read the body too: closing with request bytes unread makes the kernel answer with a
            # reset, which can destroy the reply before the client reads it.
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            body = head.split(b"\r\n\r\n", 1)[1]
            while length and len(body) < int(length.group(1)):
                data = conn.recv(4096)
                if not data:
                    return
                body += data
            self.heads.append(head)
            self.reply(conn)
            self.closed_after.append(time.monotonic() - started)

    def close(self) -> None:
        self.sock.close()


def _drip(conn: socket.socket) -> None:
    """A tarpit: a valid status line, then one header byte every 0.2 s until the client hangs up."""
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(300):
            conn.sendall(b"X")
            time.sleep(0.2)
    except OSError:
        return


def _answer(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def tarpit():
    listener = Listener(_drip)
    yield listener
    listener.close()


def test_a_dripping_receiver_is_cut_at_the_deadline(tarpit):
    target = Target("http", "127.0.0.2", tarpit.port, "/hook", "127.0.0.2")
    started = time.monotonic()
    with pytest.raises(DeadlinePassed, match="1.5 s deadline"):
        post(target, b"{}", {}, deadline_s=1.5)
    took = time.monotonic() - started
    # Each byte arrives well within any per-read timeout; only a total deadline ends it.
    assert 1.4 <= took <= 2.0, took


def test_the_connection_goes_to_the_checked_address_with_the_urls_host():
    listener = Listener(_answer)
    try:
        # The name does not resolve at all: a second lookup at connect time would fail.
        target = Target("http", "hooks.rebind.invalid", listener.port, "/in?x=1", "127.0.0.2")
        assert post(target, b'{"a": 1}', {"X-Test": "1"}, deadline_s=5) == 204
        head = listener.heads[0].decode()
        assert head.startswith("POST /in?x=1 HTTP/1.1\r\n")
        assert f"Host: hooks.rebind.invalid:{listener.port}\r\n" in head
        assert "X-Test: 1\r\n" in head
    finally:
        listener.close()


def test_an_address_refused_at_delivery_is_never_connected_to():
    listener = Listener(_answer)
    try:
        delivery = Delivery("e", f"http://127.0.0.2:{listener.port}/hook", "secret", 1)
        refused = _send(delivery, Settings.from_env({}))
        assert refused.startswith("not sent: webhook_url must reach a public address")
        time.sleep(0.2)
        assert listener.heads == []
    finally:
        listener.close()


@pytest.fixture
def tls_listener(tmp_path):
    """A TLS receiver on 127.0.0.2 whose self-signed certificate names hooks.test; `trust` verifies it.

    The client's context is built from the certificate itself, not from SSL_CERT_FILE: the environment
    reaches only contexts made after it is set, so the test would depend on what ran before it.
    """
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test",
                    "-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)

    listener = Listener(_answer, tls=context)
    listener.names = names
    listener.trust = ssl.create_default_context(cafile=str(cert))
    yield listener
    listener.close()


def test_tls_names_the_urls_host_while_connecting_to_the_checked_address(tls_listener):
    target = Target("https", "hooks.test", tls_listener.port, "/hook", "127.0.0.2")
    assert post(target, b"{}", {}, deadline_s=5, tls=tls_listener.trust) == 204
    assert tls_listener.names == ["hooks.test"]
    assert f"Host: hooks.test:{tls_listener.port}\r\n" in tls_listener.heads[0].decode()
    with pytest.raises(ssl.SSLCertVerificationError):
        post(Target("https", "other.test", tls_listener.port, "/hook", "127.0.0.2"), b"{}", {}, deadline_s=5,
             tls=tls_listener.trust)
    # Without the certificate among its trusted roots, the default context refuses the receiver.
    with pytest.raises(ssl.SSLCertVerificationError):
        post(target, b"{}", {}, deadline_s=5)
