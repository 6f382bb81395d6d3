"""The embedded default: sklearn's bundled handwritten digits as a small offline text-to-image domain."""
