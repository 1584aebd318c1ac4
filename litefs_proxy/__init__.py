"""litefs_proxy: a LiteFS-compatible read/write proxy (docs/litefs-proxy.md).

Pure core: `config`, `globs`, `classify`, `cookie`, `mountfiles`. Adapters: `watcher` (inotify position
waiting), `replicator` (the LiteFS mount stand-in), `server` (the HTTP data path).
"""

from litefs_proxy.errors import ConfigError, LitefsProxyError, MountError

__all__ = ["ConfigError", "LitefsProxyError", "MountError"]
