"""Schemathesis hooks for scripts/schema-fuzz.sh: a check that a rejected
request (4xx) changed nothing in Redis.

Redis keyspace notifications name every key a command writes. A listener
collects those under the run's key prefix; after each response the check
writes a sentinel key and waits for its notification, so every write the
request caused has arrived by then (one pub/sub connection keeps order).
Requests run one at a time and the server runs no background task that
writes (no sink, no reaper or reclaimer passes), so the writes seen belong
to the request just answered.
"""

import atexit
import os
import sys
import threading

import redis
import schemathesis

PREFIX = os.environ["AGENTBUS_PREFIX"]
SENTINEL = f"{PREFIX}-sentinel"
# Expiry and eviction are Redis' doing, not the request's.
NOT_WRITES = {"expired", "evicted"}


class Watcher:
    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.saved = self.redis.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        self.redis.config_set("notify-keyspace-events", "KA")
        atexit.register(lambda: self.redis.config_set("notify-keyspace-events", self.saved))
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(f"__keyspace@*__:{PREFIX}*")
        self.cond = threading.Condition()
        self.sentinels = 0
        self.writes: list[tuple[str, str]] = []
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        for message in self.pubsub.listen():
            key = message["channel"].decode().split(":", 1)[1]
            event = message["data"].decode()
            with self.cond:
                if key == SENTINEL:
                    self.sentinels += 1
                    self.cond.notify_all()
                elif event not in NOT_WRITES:
                    self.writes.append((key, event))

    def drain(self) -> list[tuple[str, str]]:
        """The writes since the last call."""
        with self.cond:
            target = self.sentinels + 1
        self.redis.incr(SENTINEL)
        with self.cond:
            if not self.cond.wait_for(lambda: self.sentinels >= target, timeout=10):
                raise AssertionError("keyspace notifications stopped arriving")
            writes, self.writes = self.writes, []
        return writes


WATCHER = Watcher(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
# Writes seen after accepted requests: proof that the watcher sees the server.
ACCEPTED_WRITES = [0]
atexit.register(
    lambda: print(f"schema-fuzz: {ACCEPTED_WRITES[0]} writes by accepted requests observed", file=sys.stderr)
)


def refused_invocation(response) -> bool:
    """An error body naming the audited id of a refused invocation."""
    try:
        return bool(response.json()["error"]["invoke_id"])
    except Exception:
        return False


@schemathesis.check
def rejected_requests_change_nothing(ctx, response, case):
    """A 4xx answer leaves Redis as it was."""
    writes = WATCHER.drain()
    if response.status_code < 400:
        ACCEPTED_WRITES[0] += len(writes)
    if 400 <= response.status_code < 500 and writes and refused_invocation(response):
        # The one deliberate exception: an invocation refused before it
        # started is audited (its record and one outbox event), nothing else.
        writes = [
            (key, event)
            for key, event in writes
            if not (key.endswith(":outbox") or ":invoke:inv_" in key)
        ]
    if 400 <= response.status_code < 500 and writes:
        shown = ", ".join(f"{event} {key}" for key, event in writes[:5])
        raise AssertionError(f"rejected with {response.status_code} but wrote to Redis: {shown}")
