"""The fleet console: device registry, repository server, staged rollouts with gates, simulator."""
