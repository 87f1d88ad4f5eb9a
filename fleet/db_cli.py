"""``edgeops fleet db``: the console database's telemetry partitions (PostgreSQL; fleet/partitions.py).

``partitions`` lists them; ``partition-telemetry`` turns a plain telemetry table (made before
partitioning, or with ``telemetry_partitions = "off"``) into daily partitions, keeping the rows
within ``ingest.telemetry_retention_s``. Both run on the console host with ``--config``.
"""

from __future__ import annotations

import time

import click

from edgeops.errors import ConfigError
from edgeops.fleet.cli import DEFAULT_CONFIG, _echo_json


def _open(config_path: str):
    from edgeops.fleet.config import load_config
    from edgeops.fleet.db import Database

    cfg = load_config(config_path)
    # "off": open the plain table as it is, whatever the config asks for
    db = Database(cfg.database_url(), schema=cfg.database.schema_name, table_prefix=cfg.database.table_prefix, telemetry_partitions="off")
    if db.dialect != "postgresql":
        raise ConfigError(f"{config_path}: database.url is {db.dialect}; telemetry partitions need PostgreSQL (SQLite deletes expired rows)")
    return cfg, db


@click.group("db")
def db_group() -> None:
    """The console database: telemetry partitions (PostgreSQL)."""


@db_group.command("partitions")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def partitions_cmd(config_path, as_json) -> None:
    """The telemetry table's daily partitions and their rows."""
    import sqlalchemy as sa

    from edgeops.fleet import partitions

    _cfg, db = _open(config_path)
    try:
        with db.connect() as conn:
            kind = partitions.table_kind(conn, db.schema, db.t.telemetry.name)
            parts = partitions.list_partitions(conn, db.schema, db.t.telemetry.name) if kind == "partitioned" else []
            rows = [
                {"name": p.name, "from": p.lo, "to": p.hi, "rows": conn.execute(sa.text(f"SELECT count(*) FROM {partitions.qualified(db.schema, p.name)}")).scalar()}
                for p in parts
            ]
    finally:
        db.dispose()
    if as_json:
        _echo_json({"table": db.t.telemetry.name, "kind": kind, "partitions": rows})
        return
    click.echo(f"{db.t.telemetry.name}: {kind or 'missing'}")
    for r in rows:
        click.echo(f"  {r['name']}  {time.strftime('%Y-%m-%d', time.gmtime(r['from']))}  {r['rows']} rows")


@db_group.command("partition-telemetry")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def partition_telemetry_cmd(config_path, as_json) -> None:
    """Partition a plain telemetry table by day, copying the rows within the retention.

    One transaction holding the table locked: stop the consoles (or accept that ingest waits and
    retries) while it runs. Rows older than ingest.telemetry_retention_s are not copied.
    """
    from edgeops.errors import FleetError
    from edgeops.fleet import partitions

    cfg, db = _open(config_path)
    try:
        with db.begin() as conn:
            kind = partitions.table_kind(conn, db.schema, db.t.telemetry.name)
            if kind != "plain":
                raise FleetError(f"table {db.t.telemetry.name}: {kind or 'missing'}, nothing to migrate (a new console creates it partitioned)")
            t0 = time.monotonic()
            report = partitions.migrate(conn, db.t.telemetry, db.schema, db.table_prefix, cfg.ingest.telemetry_retention_s)
    finally:
        db.dispose()
    out = {"copied": report.copied, "skipped_expired": report.skipped_expired, "partitions": report.partitions, "seconds": round(time.monotonic() - t0, 3)}
    if as_json:
        _echo_json(out)
        return
    click.echo(f"{db.t.telemetry.name}: {out['copied']} rows copied into {len(report.partitions)} daily partitions, {out['skipped_expired']} past the retention left out ({out['seconds']} s)")
