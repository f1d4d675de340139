"""``sightkit serve``: an HTTP API with dynamic batching, a web page and a face gallery.

The server is an application around the library rather than part of its public API (like
:mod:`sightkit.cli`); its contract is the HTTP API, published as an OpenAPI schema.
"""
