"""Shared test support: real brokers on free ports and small real model bundles."""
