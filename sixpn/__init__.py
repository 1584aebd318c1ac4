"""The roof of sixpn: the `sixpn` CLI and the wiring that runs each service. Nothing imports it."""
