"""What the server and the client apps agree on: message keys and the flat run config.

`fl_server` and `fl_client` never import each other; they meet in Flower messages whose keys
live in :mod:`protocol.keys`, and they read the same flat run config through
:class:`protocol.settings.RunSettings`.
"""
