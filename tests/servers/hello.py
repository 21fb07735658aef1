"""A WSGI application for the tests that run real servers (gunicorn, uWSGI)
as zdrestart workers, unchanged (tests/foreign_servers.rs). It is the
application those servers load, not part of them.

GET /            200 {"pid": ..., "version": ...}
GET /delay/<ms>  the same after <ms> milliseconds (requests in flight)
Every answer carries X-Worker-Pid. HELLO_VERSION (environment) is echoed.
"""
import os
import time

VERSION = os.environ.get("HELLO_VERSION", "1")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/delay/"):
        time.sleep(int(path[len("/delay/"):]) / 1000.0)
    body = ('{"pid": %d, "version": "%s"}\n' % (os.getpid(), VERSION)).encode()
    start_response("200 OK", [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("X-Worker-Pid", str(os.getpid())),
    ])
    return [body]


application = app
