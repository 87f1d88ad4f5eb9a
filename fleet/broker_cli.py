"""``edgeops fleet broker-config``: a broker config with the enrolment's users (fleet/broker_configs.py)."""

from __future__ import annotations

import click

from edgeops.fleet.cli import DEFAULT_CONFIG, _echo_json


@click.command("broker-config")
@click.option("--kind", type=click.Choice(["mosquitto", "nats", "rabbitmq"]), required=True, help="the broker the config is for")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--mqtt-port", type=click.IntRange(1, 65535), default=None, help="MQTT listener port (default: the password listener's, else 1883)")
@click.option("--bind", default=None, help="MQTT listener address (default: 127.0.0.1 when every URL in fleet.toml is local, else all)")
@click.option("--client-port", type=click.IntRange(1, 65535), default=4222, show_default=True, help="nats: the NATS client port (bound to 127.0.0.1)")
@click.option("--store-dir", default="/var/lib/nats/jetstream", show_default=True, help="nats: JetStream's store (MQTT sessions, retained states)")
@click.option("--broker-group", default=None, help="group the broker runs as (reads the password hashes); default: [enroll] broker_group, else the nats / rabbitmq user's group")
@click.option("--json", "as_json", is_flag=True)
def broker_config_cmd(kind, config_path, mqtt_port, bind, client_port, store_dir, broker_group, as_json) -> None:
    """Write the broker config of KIND with every password user enrolled (consoles, devices).

    enroll and console-user keep a NATS or RabbitMQ config written here up to date; reload the
    broker after each (nats-server --signal reload; rabbitmqctl import_definitions FILE).
    """
    from edgeops.fleet.broker_configs import write_broker_config
    from edgeops.fleet.config import load_config

    config = load_config(config_path)
    result = write_broker_config(config, kind, mqtt_port=mqtt_port, bind=bind, client_port=client_port, store_dir=store_dir, group=broker_group)
    if as_json:
        _echo_json(result)
        return
    click.echo(f"{kind}: wrote {', '.join(result['files'])}")
    if "start" in result:
        click.echo(f"start: {result['start']}")
    if "include" in result:
        click.echo(f"mosquitto.conf: {result['include']}")
    for note in result["notes"]:
        click.echo(f"broker: {note}")
