"""edge_proxy: see docs/architecture.md."""
