"""FFAvatar backend service: ZeroMQ ROUTER server, jobs, avatar store; pure protocol + client.

``protocol`` and ``client`` import only the standard library, pyzmq and msgpack (they ship inside the
Blender extension); everything else may use the model. Run the server with
``python -m ffavatar_backend serve`` (see docs/backend.md and docs/protocol.md).
"""

from .protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
