"""The console's paho client: reads the socket ahead and acknowledges a batch in one write.

Two costs of paho 2.x that a console receiving thousands of QoS 1 messages a second pays per
message (docs/scale.md: paho's network thread was 29% of the console's CPU, the PUBACKs 14%):

- **Reads.** paho reads each packet with at least three ``recv`` calls (the command byte, each
  remaining-length byte, the body), and its loop does one ``select`` and one round of
  housekeeping (``loop_misc``) per packet. :class:`FastClient` reads up to ``READ_AHEAD``
  bytes per ``recv`` and parses every whole packet they hold before it goes back to
  ``select``. The buffer is always empty when :meth:`FastClient.loop_read` returns (bytes it
  did not take are still in the kernel's socket buffer, where ``select`` sees them), so paho's
  loop never sleeps on bytes read but not parsed; at most ``READS_PER_LOOP`` reads per loop
  keep a sender that never pauses from holding back the writes (acknowledgements, pings).
- **MQTT 5 properties.** paho builds a ``Properties`` object for every MQTT 5 PUBLISH, and its
  constructor builds two tables of some 30 entries each time. A PUBLISH that carries no
  properties (what devices send) gets an empty ``Properties`` sharing one set of those tables;
  any other PUBLISH (properties, QoS 2, paho logging on) goes through paho's own code.
- **Acknowledgements.** ``Client.ack`` queues one 4-byte PUBACK, wakes the network thread
  through its socket pair and is written by one ``send``: per message. :meth:`FastClient.ack_many`
  queues the PUBACKs of a whole batch as one packet: one wake-up, one ``send``. It changes
  when nothing is acknowledged: callers (fleet/ingest.py) still call it only once the batch
  is committed.

Both use paho's private methods (``_sock_recv``, ``_packet_read``, ``_packet_queue``), stable
across paho 1.x and 2.x and pinned by the package's ``paho-mqtt<3``; tests/fleet/test_paho_client.py
runs them against a real broker. :func:`supported` says whether the installed paho has them;
without them the console uses the plain client (``Client.ack`` per message).
"""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTErrorCode, MQTTMessage, time_func
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_AHEAD = 65536  # bytes asked of the socket per recv
READS_PER_LOOP = 8  # recv calls per loop_read at most: then pending writes go out

_PUBACK_WORD = 0x40020000  # PUBACK fixed header (0x40) and remaining length 2, then the 16-bit packet id
_PRIVATE = ("_sock_recv", "_packet_read", "_packet_queue", "_loop_rc_handle", "_handle_publish", "_handle_on_message", "_send_puback")
_TABLES = Properties(PacketTypes.PUBLISH).__dict__  # packetType, types, names, properties: read-only lookups


def _no_properties() -> Properties:
    """An empty PUBLISH ``Properties`` without rebuilding its lookup tables."""
    props = Properties.__new__(Properties)
    props.__dict__.update(_TABLES)
    return props


def supported() -> bool:
    """True when the installed paho has the internals :class:`FastClient` builds on."""
    return all(callable(getattr(mqtt.Client, name, None)) for name in _PRIVATE)


def puback_packets(mids: list[int]) -> bytes:
    """The PUBACK packets for ``mids``, back to back (MQTT 3.1.1 and 5: success needs no reason code)."""
    return struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])


class FastClient(mqtt.Client):
    """A paho ``Client`` with read-ahead and batched acknowledgements (module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ahead = b""  # bytes read from _ahead_sock and not yet handed to paho's parser
        self._ahead_pos = 0
        self._ahead_sock = None
        self._reads_left: int | None = None  # recv calls left in this loop_read (None: not in one)

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._ahead_sock:  # a new connection: what was read from the old one is void
            self._ahead, self._ahead_pos, self._ahead_sock = b"", 0, sock
        pos = self._ahead_pos
        if pos < len(self._ahead):
            end = pos + bufsize
            self._ahead_pos = end
            return self._ahead[pos:end]
        if self._reads_left is not None:
            if self._reads_left <= 0:
                raise BlockingIOError()  # parsed what this loop read; the rest waits in the socket
            self._reads_left -= 1
        data = super()._sock_recv(max(bufsize, READ_AHEAD))
        if len(data) <= bufsize:
            return data  # b"" (connection closed) included
        self._ahead, self._ahead_pos = data, bufsize
        return data[:bufsize]

    def _read_ahead_left(self) -> bool:
        return self._ahead_pos < len(self._ahead) and self._ahead_sock is self._sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Parse every whole packet of up to ``READS_PER_LOOP`` socket reads (paho: one packet)."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._reads_left = READS_PER_LOOP
        try:
            while True:
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    self._ahead, self._ahead_pos = b"", 0
                    return self._loop_rc_handle(rc)
                # AGAIN: the socket has nothing more for this loop, or paho paused inside a long
                # packet (it stops every 100 reads): go on while read-ahead bytes remain
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN and not self._read_ahead_left():
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            self._reads_left = None

    def _handle_publish(self) -> MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or qos > 1 or self._logger is not None or self.on_log is not None:
            return super()._handle_publish()
        tlen = (packet[0] << 8) | packet[1] if len(packet) >= 2 else 0
        pos = 2 + tlen + (2 if qos else 0)  # the property length, one byte when 0
        if tlen == 0 or pos >= len(packet) or packet[pos] != 0:
            # properties (a topic alias among them), or malformed: paho's own code
            return super()._handle_publish()
        mid = (packet[pos - 2] << 8) | packet[pos - 1] if qos else 0
        message = MQTTMessage(mid=mid, topic=bytes(packet[2 : 2 + tlen]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties = _no_properties()
        message.payload = bytes(packet[pos + 1 :])
        message.timestamp = time_func()
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages (manual acks): one queued packet and one wake-up for all."""
        if mids and self._manual_ack:
            self._packet_queue(mqtt.PUBACK, puback_packets(mids), mids[-1], 1)
