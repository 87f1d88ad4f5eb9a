"""Hardware-in-loop: run a bundle's self-test and benchmark on a device or locally, for CI.

Like the CLI, this is a top-floor module: it may use the agent (the same self-test a device
runs before activation) and talks to the fleet console only over its REST API.
"""
