"""netns_lab: see docs/architecture.md."""
