"""A WSGI application for tests/operator_guidance.rs: what a real server
(gunicorn, uWSGI) writes when an application warns and fails, so that the
master's log shows each line at the level it states.

At import: one WARNING and one ERROR through Python logging's default format
(`WARNING:levels:...`). GET /boom raises ZeroDivisionError: the server logs
it with a traceback. GET / answers 200.
"""
import logging
import os

logging.basicConfig()
logging.getLogger("levels").warning("levels app: a warning at import")
logging.getLogger("levels").error("levels app: an error at import")


def app(environ, start_response):
    if environ.get("PATH_INFO", "/") == "/boom":
        return [str(1 / 0).encode()]
    body = b"ok\n"
    start_response("200 OK", [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Worker-Pid", str(os.getpid())),
    ])
    return [body]


application = app
