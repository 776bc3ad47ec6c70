"""Deep parsing through the pipeline: what the stream parser puts in http events."""

from __future__ import annotations

from appliance import secrets
from appliance.decode.flows import FlowLimits
from appliance.pipeline import Pipeline, RawEvents
from appliance.simulate.packets import ACK, PSH, SYN
from appliance.simulate.packets import Path as Dir
from appliance.testing.packets import batch_from_frames

C2S = Dir("192.0.2.1", "198.51.100.2", 40000, 80)
S2C = Dir("198.51.100.2", "192.0.2.1", 80, 40000)


def test_a_request_path_is_redacted_once() -> None:
    """An email in the path becomes fingerprint@domain once: redacting the redacted text again would
    fingerprint the fingerprint ("fp:fp:…")."""
    secrets.set_secret("test-secret")
    request = b"GET /v1/users/alice@example.com/keys HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    frames = [C2S.tcp(100, 0, SYN), S2C.tcp(500, 101, SYN | ACK), C2S.tcp(101, 501, ACK),
              C2S.tcp(101, 501, PSH | ACK, request), S2C.tcp(501, 101 + len(request), PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\n")]
    got: list[RawEvents] = []
    pipe = Pipeline("", FlowLimits(), raw_sink=got.append)
    pipe.process_batch(batch_from_frames(frames, ts_ns=[10**18 + i * 1000 for i in range(len(frames))]))
    pipe.finish()
    [row] = [r for raw in got for r in raw.get("http", [])]
    path = row["url.path"]
    assert "alice" not in path
    assert path == f"/v1/users/{secrets.fingerprint('alice@example.com', 'email')}@example.com/keys"
    assert path.count("fp:") == 1
    assert row["http.response.status_code"] == 200
