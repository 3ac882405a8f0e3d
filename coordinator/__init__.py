"""ForgeOne's control plane and client side.

The public face for services is :class:`ForgeClient`; errors are the
``ForgeError`` tree in :mod:`schemas.errors`.
"""

from schemas.errors import ForgeError

from .client import ForgeClient

__all__ = ["ForgeClient", "ForgeError"]
