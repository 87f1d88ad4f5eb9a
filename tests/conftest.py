"""Shared fixtures: a real MQTT broker per test module."""

from __future__ import annotations

import pytest

from tests.support.broker import TestBroker


@pytest.fixture(scope="module")
def mqtt_broker():
    """A real broker (mosquitto on a free port, amqtt when mosquitto is missing) for one module."""
    with TestBroker() as broker:
        yield broker
