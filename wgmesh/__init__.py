"""wgmesh: see docs/architecture.md."""
