"""Keeps schemathesis' long-poll claims short: a valid wait_ms is shrunk to 50 ms so that the
run tests the protocol instead of idling. Invalid values are left alone (they must be refused)."""
import schemathesis


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        wait = body.get("wait_ms")
        if isinstance(wait, int) and not isinstance(wait, bool) and 50 < wait <= 30000:
            body["wait_ms"] = 50
    return body
