"""The fleet console in a browser (/ui/): pages, live fragments, vendored JavaScript."""
