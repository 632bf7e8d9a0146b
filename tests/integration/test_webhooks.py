"""Webhooks: signed, delivered at least once, retried with backoff, harmless when the receiver fails."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.models import DIGITS_INPUT, circular_invariant_cnn, save_torchscript

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP receiver on loopback that fails its first `failures` requests with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[float, dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.received) < receiver.failures else 200
                receiver.received.append((time.monotonic(), dict(self.headers), body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"got {len(self.received)} of {count} deliveries"

    def close(self) -> None:
        self.server.shutdown()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over 't.body' and compare in constant time."""
    parts = dict(item.split("=", 1) for item in headers["X-ShiftScore-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@pytest.fixture(scope="module")
def webhook_tenant(pg_stack, tmp_path_factory):
    api = pg_stack.session("webhooks")
    path = save_torchscript(circular_invariant_cnn(), tmp_path_factory.mktemp("wh") / "m.pt")
    model = api.wait_model(api.upload_model(path, DIGITS_INPUT)["id"])
    return api, model


def _submit(api, model, url: str) -> dict:
    response = api.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0], [0, 1]]},
        "max_samples": 20, "webhook_url": url,
    })
    assert response.status_code == 202, response.text
    return response.json()


def test_webhook_is_signed_retried_with_backoff_and_delivered(webhook_tenant):
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
        assert second - first >= 0.9 and third - second >= 1.9, "no backoff between attempts"
        secret = api.get("/v1/tenant").json()["webhook_secret"]
        for _, headers, body, _ in receiver.received:
            assert verify(secret, headers, body)
            assert not verify("another tenant's secret", headers, body)
        payload = json.loads(receiver.received[-1][2])
        assert payload["event"] == "evaluation.succeeded"
        assert payload["evaluation"]["id"] == evaluation["id"]
        assert payload["evaluation"]["summary"] == done["summary"]
        assert [h["X-ShiftScore-Attempt"] for _, h, _, _ in receiver.received] == ["1", "2", "3"]
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
    unreachable = _submit(api, model, "http://127.0.0.1:9/nothing-listens-here")
    assert api.wait_evaluation(unreachable["id"])["status"] == "succeeded"


def test_a_webhook_url_must_be_http(webhook_tenant):
    api, model = webhook_tenant
    response = api.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]},
        "webhook_url": "file:///etc/passwd",
    })
    assert response.status_code == 400
    assert "webhook_url" in response.json()["detail"]
