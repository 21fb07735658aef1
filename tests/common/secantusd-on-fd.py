# secantusd-py serving on a socket the test harness bound (tests/common/mongo.rs).
#
#   <venv python> secantusd-on-fd.py --host 127.0.0.1 --port PORT [secantusd-py options]
#   stdin: a TCP socket bound to 127.0.0.1:PORT, not listening yet
#
# secantusd-py only binds a port itself (SecantusDBServer.start: socket(),
# setsockopt, bind, listen). A port picked free and bound later may be taken
# by anyone in between; so the harness binds it and this launcher makes the
# server adopt that socket: the first socket the server creates is the
# inherited one, whose bind() is a no-op that checks the address. listen()
# is the server's own, so connections are refused until it serves. If the
# server ever created its socket another way, its own bind() would fail with
# EADDRINUSE (the harness keeps the port reserved): loudly, never silently.
import os
import socket
import sys

from secantus.cli import main

_fd = os.dup(0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_real_socket = socket.socket


class _Inherited(_real_socket):
    def bind(self, address):
        if tuple(address[:2]) != tuple(self.getsockname()[:2]):
            raise OSError("secantusd-on-fd: asked to bind %r, the inherited socket is bound to %r" % (address, self.getsockname()))


def _first_socket(*args, **kwargs):
    socket.socket = _real_socket
    return _Inherited(fileno=_fd)


socket.socket = _first_socket
sys.argv[0] = "secantusd-py"
sys.exit(main())
