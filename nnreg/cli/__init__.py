"""Command-line tools: thin click wrappers over the Python APIs (lower layers never import this package)."""
