"""ForgeOne's data plane: host plugins, run calls in pooled wasmtime instances.

Start it with ``forgeone-worker`` (see ``worker.settings`` for options).
"""
