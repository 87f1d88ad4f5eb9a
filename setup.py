"""Maps the design's top-level folders into the `edgeops` import namespace.

`converters/`, `agent/`, `fleet/` and `hardware-profiles/` install as `edgeops.converters`,
`edgeops.agent`, `edgeops.fleet` and `edgeops.hardware_profiles`, so nothing generic named
`agent` or `fleet` lands in site-packages. Sub-packages are found automatically.
"""
from setuptools import find_packages, setup

NAMESPACE_FOLDERS = {
    "edgeops": "edgeops",
    "edgeops.converters": "converters",
    "edgeops.agent": "agent",
    "edgeops.fleet": "fleet",
    "edgeops.hardware_profiles": "hardware-profiles",
}

packages, package_dir = [], {}
for namespace, folder in NAMESPACE_FOLDERS.items():
    package_dir[namespace] = folder
    packages.append(namespace)
    packages += [f"{namespace}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
