"""litefs_proxy: see docs/architecture.md."""
