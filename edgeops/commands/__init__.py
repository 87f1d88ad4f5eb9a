"""CLI commands that belong to the core (profiles, inspect)."""
