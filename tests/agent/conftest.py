"""Fixtures of the agent tests: a signed repository with published test bundles."""

from __future__ import annotations

import pytest

from tests.agent.helpers import TrustFixture


@pytest.fixture(scope="module")
def trust_repo(tmp_path_factory):
    """Keys + a TUF repository with good v1 (release 1) and good v2 (release 2) published."""
    tf = TrustFixture(tmp_path_factory.mktemp("trust"))
    tf.v1 = tf.publish("1.0.0", 1)
    tf.v2 = tf.publish("2.0.0", 2, seed=0)
    return tf
