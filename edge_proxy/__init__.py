"""edge_proxy: the anycast HTTP edge proxy (docs/edge-proxy.md). `edge_proxy.http1` is its reusable HTTP/1.1
machinery; `edge_proxy.routing` the pure routing core; `edge_proxy.service` runs it (`sixpn proxy serve`)."""
