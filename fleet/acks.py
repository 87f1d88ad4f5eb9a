"""Acknowledgements of broker messages, sent a batch at a time.

A QoS 1 device message is acknowledged to the broker only once ingest has committed it
(fleet/ingest.py). Acknowledging the messages of a committed batch one by one cost a queued
packet, a wake-up of paho's network thread and a socket write each (fleet/paho_client.py); an
:class:`Ack` instead names its connection's batch sender and the message id, and
:func:`acknowledge` hands each sender all of a batch's ids in one call, in the order given.

Any other callable is an acknowledgement too (capture chunks, tests) and is simply called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Ack:
    """One message's acknowledgement: ``send([mid])`` alone, or batched by :func:`acknowledge`.

    ``send`` must be one object per connection (it is the key the batch is grouped by)."""

    __slots__ = ("send", "mid")

    def __init__(self, send: Callable[[list[int]], None], mid: int):
        self.send = send
        self.mid = mid

    def __call__(self) -> None:
        self.send([self.mid])


def acknowledge(acks: Iterable[Callable[[], None] | None]) -> None:
    """Send every acknowledgement: :class:`Ack`s in one call per sender, others one by one.

    Every sender is tried; the first error is raised once all were."""
    groups: dict[Callable[[list[int]], None], list[int]] = {}
    error: BaseException | None = None
    for ack in acks:
        if ack is None:
            continue
        if type(ack) is Ack:
            groups.setdefault(ack.send, []).append(ack.mid)
            continue
        try:
            ack()
        except Exception as e:  # the others are still sent
            error = error or e
    for send, mids in groups.items():
        try:
            send(mids)
        except Exception as e:
            error = error or e
    if error is not None:
        raise error
