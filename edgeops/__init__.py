"""edgeops: take trained ML models to fleets of edge devices and keep them healthy there.

The core package (this folder) holds what every role shares: the bundle format, hardware
profiles, the MQTT protocol, trust and the error hierarchy. It imports none of the wings
(`edgeops.converters`, `edgeops.agent`, `edgeops.fleet`).
"""

__version__ = "0.1.0"
