"""Device state on brokers that deliver no retained message to a wildcard subscription.

Every device publishes its state retained on ``edgeops/v1/<id>/state`` (last will: offline)
when it connects and when it changes. A console subscribed to ``edgeops/v1/+/state`` gets the
live ones, and on (re)subscribing the retained ones: that is how a console started after its
devices learns they are online and what they run. RabbitMQ 3.10's MQTT plugin delivers retained
messages only to subscriptions on the exact topic, so a console (re)started after its devices
saw them as unknown until they next changed state.

The registry (database) is the source of truth for device state: ingest stores each state
with its timestamp and never lets an older one win, every replica reads state from there. What
is missing on such a broker is only the catch-up, and the exact topics are known: the
registry lists the enrolled devices. So after each (re)connect the console subscribes to each
enrolled device's exact state topic (in chunks), which brings its retained state, and
unsubscribes from each chunk ``PAUSE_S`` later (:func:`sweep`; the broker handles one
connection's packets in order, so the retained deliveries of a SUBSCRIBE are on their way
before its UNSUBSCRIBE is read). The ordinary
``+/state`` subscription carries the live ones in between.

Whether a broker needs this is measured, not configured (:func:`retained_reaches_wildcards`):
the console publishes a retained probe on its probe state topic and subscribes to a wildcard
filter that covers it; the probe comes back flagged retained, or the broker lacks the feature.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from edgeops.protocol import PROTOCOL, state_topic

log = logging.getLogger("edgeops.fleet.retained_state")

CHUNK = 500  # exact state topics per SUBSCRIBE (a broker's packet size and per-packet work)
PAUSE_S = 0.5  # between a chunk's SUBSCRIBE and its UNSUBSCRIBE (10,000 devices: 10 s of catch-up)


def probe_state_topic(probe_telemetry_topic: str) -> str:
    """The retained probe's topic, next to the replica's telemetry probe topic."""
    return probe_telemetry_topic.rsplit("/", 1)[0] + "/state"


def retained_reaches_wildcards(client, topic: str, seen: threading.Event, timeout: float = 3.0) -> bool:
    """Publish a retained probe on ``topic``, subscribe to a wildcard covering it; True when
    the probe comes back as a retained delivery (the caller sets ``seen`` on that message).

    Clears the probe afterwards (an empty retained message) and drops the wildcard filter."""
    wildcard = topic.rsplit("/", 1)[0] + "/+"
    seen.clear()
    info = client.publish(topic, b"retained probe", qos=1, retain=True)
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):
        pass
    client.subscribe(wildcard, 1)
    ok = seen.wait(timeout)
    client.unsubscribe(wildcard)
    client.publish(topic, b"", qos=1, retain=True)  # clears the retained probe
    return ok


def chunks(items: list[str], n: int = CHUNK) -> Iterable[list[str]]:
    """``items`` in lists of at most ``n``."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def sweep(client, device_ids: Iterable[str], connected: Callable[[], bool], pause_s: float = PAUSE_S) -> int:
    """Subscribe to each device's exact state topic (its retained state comes), then unsubscribe.

    Returns the number of topics swept; stops early when the connection drops (the next
    connect sweeps again)."""
    import paho.mqtt.client as mqtt

    ids = sorted(device_ids)
    done = 0
    for part in chunks(ids):
        if not connected():
            break
        topics = [state_topic(d) for d in part]
        rc, _ = client.subscribe([(t, 1) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            break
        time.sleep(pause_s)  # spreads the catch-up; the deliveries are queued before the UNSUBSCRIBE is read
        client.unsubscribe(topics)
        done += len(part)
    if done:
        log.info("state catch-up: subscribed to %d exact state topics for their retained state (broker delivers no retained message to %s/+/state)", done, PROTOCOL)
    return done
