"""dns6pn: see docs/architecture.md."""
