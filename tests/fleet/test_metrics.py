"""/metrics label values come from the console's own sets, never from free device text."""

from __future__ import annotations

import re

import pytest

from edgeops.fleet import metrics
from edgeops.fleet.config import IngestConfig
from edgeops.fleet.ingest import Ingestor
from edgeops.fleet.registry import register_devices
from tests.fleet.helpers import state, telemetry


@pytest.fixture
def ingest(db):
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    yield ing
    ing.stop()


def feed(ing, *msgs):
    for topic, payload in msgs:
        ing.submit(topic, payload)
    assert ing.flush(30)


def _version_series(body: str) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for name, bundle, version in re.findall(r'^(edgeops_[a-z_]+)\{bundle="([^"]*)",version="([^"]*)"\}', body, re.M):
        out.setdefault(name, set()).add((bundle, version))
    return out


def test_version_labels_come_only_from_published_versions(db, ingest, fleet_repo):
    """Issue 13 finding 8: one device sending 2,000 version strings made 6,003 series."""
    register_devices(db, [{"id": "good"}, {"id": "noisy"}])
    feed(ingest, state("good", active="digits@1.0.0"), telemetry("good", 1, "digits@1.0.0", inferences=10))
    # a state and a telemetry batch per made-up version, as a device may send
    feed(ingest, *[m for i in range(200) for m in (state("noisy", active=f"digits@9.{i}"), telemetry("noisy", i + 1, f"x{i}@{i}", inferences=1))])
    body = metrics.render(db, repo_dir=fleet_repo["repo"])[0].decode()
    series = _version_series(body)
    allowed = {("digits", "1.0.0"), ("digits", "2.0.0"), ("digits", "3.0.0"), (metrics.UNPUBLISHED, metrics.UNPUBLISHED), ("", "")}
    assert all(labels <= allowed for labels in series.values()), series
    assert series["edgeops_devices_online_by_version"] == {("digits", "1.0.0"), (metrics.UNPUBLISHED, metrics.UNPUBLISHED)}
    assert 'edgeops_telemetry_inferences{bundle="digits",version="1.0.0"} 10.0' in body
    # the unpublished versions are summed into one series, not lost
    assert f'edgeops_telemetry_inferences{{bundle="{metrics.UNPUBLISHED}",version="{metrics.UNPUBLISHED}"}} 200.0' in body
    assert len(body) < 20_000
