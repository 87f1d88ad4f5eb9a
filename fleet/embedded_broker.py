"""An in-process MQTT broker (amqtt) for the demo and for machines without mosquitto.

It speaks MQTT 3.1.1, which is why the edgeops protocol carries request/response correlation
in message bodies rather than MQTT 5 properties. For production use a real broker
(mosquitto, EMQX, VerneMQ, RabbitMQ or NATS MQTT) with per-device credentials and ACLs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SnapshotDict(dict):
    """A dict whose iteration walks a snapshot of its keys/items.

    amqtt 0.12 iterates its subscription table with ``await`` inside the loop (broadcast to
    subscribers, retained messages for a reconnecting session). A client subscribing during
    that await changes the dict's size, the loop raises "dictionary changed size during
    iteration", and the message being broadcast is silently lost for the remaining
    subscribers (the broadcast task's exception is never retrieved). With many devices
    connecting at once (the demo's 50 agents) this happened. Iterating a snapshot is what the
    loops mean: a subscription added mid-broadcast simply does not get that message.
    """

    def __iter__(self):
        return iter(list(super().keys()))

    def keys(self):
        return list(super().keys())

    def items(self):
        return list(super().items())

    def values(self):
        return list(super().values())


def _snapshot_tables(broker) -> None:
    """Swap amqtt's shared tables for snapshot-iterating dicts (see SnapshotDict)."""
    for name in ("_subscriptions", "_sessions", "_retained_messages"):
        table = getattr(broker, name, None)
        if isinstance(table, dict) and not isinstance(table, SnapshotDict):
            setattr(broker, name, SnapshotDict(table))


class EmbeddedBroker:
    """Runs an amqtt broker on its own thread and event loop; ``url`` is where clients connect."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """mqtt://host:port of the broker."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedBroker":
        """Start the broker and wait until it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"embedded MQTT broker did not start on {self.url} within {timeout}s")
        if self._error:
            raise RuntimeError(f"embedded MQTT broker failed to start on {self.url}: {self._error}") from self._error
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker

        # amqtt logs every connection at INFO; the demo prints its own story.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def boot() -> None:
            self._broker = Broker(config)
            _snapshot_tables(self._broker)
            await self._broker.start()

        try:
            self._loop.run_until_complete(boot())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        """Shut the broker down and join its thread."""
        if self._loop is None or self._broker is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
        self._broker = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
