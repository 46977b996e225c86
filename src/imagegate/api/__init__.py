"""HTTP routers, one module per endpoint family. Each only translates wire <-> service."""
