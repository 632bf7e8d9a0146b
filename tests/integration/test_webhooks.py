"""Webhooks: signed, delivered at least once, retried with backoff, harmless when the receiver fails,
never sent to internal addresses, bounded in time and isolated from the reconciler.

The stack allow-lists 127.0.0.2 only (SHIFTSCORE_WEBHOOK_ALLOW_HOSTS), where the receivers
listen; every spelling of 127.0.0.1 and the other internal ranges stays refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from tests.models import DIGITS_INPUT, circular_invariant_cnn, save_torchscript
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration

RECEIVER_HOST = "127.0.0.2"
DEADLINE_S = 8
STALE_AFTER_S = 1
RECONCILE_PERIOD_S = 2  # worker/scheduler.py periodic_tasks
DRIP_EVERY_S = 0.5


class Receiver:
    """An HTTP receiver on 127.0.0.2. It fails its first `failures` requests with 500; a tarpit
    instead sends a status line and then one byte every DRIP_EVERY_S until the sender hangs up."""

    def __init__(self, failures: int = 0, tarpit: bool = False) -> None:
        self.failures = failures
        self.received: list[tuple[float, dict[str, str], bytes, int]] = []
        self.connections: list[list[float | None]] = []  # [started, ended] wall-clock times
        self.stopped = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.received) < receiver.failures else 200
                receiver.received.append((time.time(), dict(self.headers), body, status))
                if tarpit:
                    receiver._drip(self)
                    return
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((RECEIVER_HOST, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{RECEIVER_HOST}:{self.server.server_address[1]}/hook"

    def _drip(self, handler: BaseHTTPRequestHandler) -> None:
        connection = [time.time(), None]
        self.connections.append(connection)
        conn = handler.connection
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self.stopped.is_set():
                conn.sendall(b"X")
                # The sender hanging up makes the socket readable with nothing to read.
                if select.select([conn], [], [], DRIP_EVERY_S)[0] and conn.recv(1) == b"":
                    break
        except OSError:
            pass
        connection[1] = time.time()
        handler.close_connection = True

    def dripping_at(self, moment: float) -> bool:
        return any(start <= moment and (end is None or end > moment) for start, end in self.connections)

    def wait(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, f"got {len(self.received)} of {count} deliveries"

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over 't.body' and compare in constant time."""
    parts = dict(item.split("=", 1) for item in headers["X-ShiftScore-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory, broker) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("webhooks-stack"), broker_url=broker.url,
        SHIFTSCORE_WEBHOOK_ALLOW_HOSTS=f"{RECEIVER_HOST}/32", SHIFTSCORE_WEBHOOK_DEADLINE=str(DEADLINE_S),
        SHIFTSCORE_STALE_AFTER=str(STALE_AFTER_S),
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def webhook_tenant(stack, tmp_path_factory):
    api = stack.session("webhooks")
    path = save_torchscript(circular_invariant_cnn(), tmp_path_factory.mktemp("wh") / "m.pt")
    model = api.wait_model(api.upload_model(path, DIGITS_INPUT)["id"])
    return api, model


def _request(model, url: str) -> dict:
    return {"model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0], [0, 1]]},
            "max_samples": 20, "webhook_url": url}


def _submit(api, model, url: str) -> dict:
    response = api.post("/v1/evaluations", json=_request(model, url))
    assert response.status_code == 202, response.text
    return response.json()


def test_webhook_is_signed_retried_with_backoff_and_delivered(stack, webhook_tenant):
    api, model = webhook_tenant
    receiver = Receiver(failures=2)
    try:
        evaluation = _submit(api, model, receiver.url)
        done = api.wait_evaluation(evaluation["id"])
        assert done["status"] == "succeeded"
        receiver.wait(3)
        time.sleep(2.5)  # a delivered webhook is not sent again
        assert [r[3] for r in receiver.received] == [500, 500, 200]
        first, second, third = (r[0] for r in receiver.received)
        # Celery's retry_backoff with full jitter: retry n waits a random 0..2^(n-1) s.
        assert second - first <= 1 + 1.0 and third - second <= 2 + 1.0, "retries slower than their backoff"
        secret = api.get("/v1/tenant").json()["webhook_secret"]
        for _, headers, body, _ in receiver.received:
            assert verify(secret, headers, body)
            assert not verify("another tenant's secret", headers, body)
        payload = json.loads(receiver.received[-1][2])
        assert payload["event"] == "evaluation.succeeded"
        assert payload["evaluation"]["id"] == evaluation["id"]
        assert payload["evaluation"]["summary"] == done["summary"]
        assert [h["X-ShiftScore-Attempt"] for _, h, _, _ in receiver.received] == ["1", "2", "3"]
        [(attempts, delivered, error)] = stack.sql(
            "SELECT webhook_attempts, webhook_delivered_at, webhook_error FROM evaluations WHERE id = %s",
            evaluation["id"])
        assert attempts == 3 and delivered is not None and error is None
    finally:
        receiver.close()


def test_a_failing_receiver_never_affects_the_evaluation(webhook_tenant):
    api, model = webhook_tenant
    receiver = Receiver(failures=1000)
    try:
        evaluation = _submit(api, model, receiver.url)
        done = api.wait_evaluation(evaluation["id"])
        receiver.wait(2)
        assert done["status"] == "succeeded" and done["error"] is None
        assert api.get(f"/v1/evaluations/{evaluation['id']}").json()["status"] == "succeeded"
    finally:
        receiver.close()
    unreachable = _submit(api, model, f"http://{RECEIVER_HOST}:9/nothing-listens-here")
    assert api.wait_evaluation(unreachable["id"])["status"] == "succeeded"


def test_a_webhook_url_must_be_http(webhook_tenant):
    api, model = webhook_tenant
    response = api.post("/v1/evaluations", json=_request(model, "file:///etc/passwd"))
    assert response.status_code == 400
    assert "webhook_url" in response.json()["detail"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://2130706433/hook", "http://127.1/hook", "http://0x7f.1/hook",
    "http://0.0.0.0/hook", "http://[::ffff:127.0.0.1]/hook", "http://localhost/hook", "http://[::1]/hook",
    "http://10.0.0.1/hook", "http://192.168.0.10/hook", "http://169.254.169.254/latest/meta-data/",
    "http://[fd00::1]/hook", "http://[fe80::1]/hook", "http://224.0.0.1/hook", "http://127.0.0.3/hook",
])
def test_internal_webhook_urls_are_refused_at_submission(webhook_tenant, url):
    api, model = webhook_tenant
    started = time.monotonic()
    response = api.post("/v1/evaluations", json=_request(model, url))
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert "SHIFTSCORE_WEBHOOK_ALLOW_HOSTS" in problem["detail"] and "public" in problem["detail"]
    assert problem["errors"][0]["field"] == "webhook_url"
    assert time.monotonic() - started < 2


def test_a_tarpit_receiver_is_cut_at_the_deadline_and_never_delays_another(stack, webhook_tenant):
    api, model = webhook_tenant
    tarpit, fast = Receiver(tarpit=True), Receiver()
    try:
        slow = _submit(api, model, tarpit.url)
        tarpit.wait(1, timeout=60)
        quick = _submit(api, model, fast.url)
        finished = datetime.fromisoformat(api.wait_evaluation(quick["id"])["finished_at"]).timestamp()
        fast.wait(1, timeout=DEADLINE_S)
        arrived = fast.received[0][0]
        # Bound: within 3 s of the evaluation's end (a 1 s pass queues it, a free thread sends it),
        # while the tarpit still holds its delivery.
        assert arrived - finished <= 3.0, arrived - finished
        assert tarpit.dripping_at(arrived), "the fast delivery waited for the tarpit"

        tarpit.wait(2, timeout=DEADLINE_S + 15)
        started, ended = tarpit.connections[0]
        assert ended is not None and DEADLINE_S - 0.5 <= ended - started <= DEADLINE_S + 1.5, ended - started
        assert tarpit.received[1][0] >= ended, "retried before the first attempt was cut"
        assert [h["X-ShiftScore-Attempt"] for _, h, _, _ in tarpit.received[:2]] == ["1", "2"]
        [(error,)] = stack.sql("SELECT webhook_error FROM evaluations WHERE id = %s", slow["id"])
        assert f"{DEADLINE_S} s deadline" in error
    finally:
        tarpit.close()
        fast.close()


def test_the_reconciler_keeps_its_period_while_a_tarpit_holds_deliveries(stack, broker, webhook_tenant):
    api, model = webhook_tenant
    tarpit = Receiver(tarpit=True)
    queue = redis.Redis(port=broker.port)
    try:
        _submit(api, model, tarpit.url)
        tarpit.wait(1, timeout=60)
        # No worker takes the next sweep's message, and then Redis loses it (as a restart
        # without persistence would): only the reconciler can send it again.
        stack.kill_worker(stack.workers[0])
        lost = api.post("/v1/evaluations", json={**_request(model, tarpit.url), "webhook_url": None}).json()
        deadline = time.monotonic() + 10
        while queue.llen("shiftscore") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queue.delete("shiftscore") == 1
        lost_at = time.time()
        assert tarpit.dripping_at(lost_at)
        while queue.llen("shiftscore") == 0 and time.time() - lost_at < 30:
            time.sleep(0.05)
        resent_after = time.time() - lost_at
        # Bound: once the row is older than SHIFTSCORE_STALE_AFTER, the next pass (every 2 s) sends it again.
        bound = STALE_AFTER_S + RECONCILE_PERIOD_S + 1.0
        assert resent_after <= bound, f"the lost message came back after {resent_after:.1f} s, not within {bound} s"
        stack.start_worker()
        assert api.wait_evaluation(lost["id"], timeout=120)["status"] == "succeeded"
    finally:
        tarpit.close()
