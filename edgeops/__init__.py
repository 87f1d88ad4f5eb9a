"""edgeops: take trained ML models to fleets of edge devices and keep them healthy there.

The core package (this folder) holds what every role shares: the bundle format, hardware
profiles, the MQTT protocol, trust and the error hierarchy. It imports none of the wings
(`edgeops.converters`, `edgeops.agent`, `edgeops.fleet`).
"""

__version__ = "0.1.0"

# The wings live in top-level folders of the repository (converters/, agent/, fleet/,
# hardware-profiles/) and setup.py maps them into this namespace when the distribution is
# installed. Run straight from a source checkout (PYTHONPATH=.), the same names resolve here.
def _source_checkout_wings() -> None:
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "agent")):
        __path__.append(root)  # after this folder: an installed mapping still wins


_source_checkout_wings()
del _source_checkout_wings
