"""`ci-runner ui`: the web view of this machine's runs, on 127.0.0.1, for the person at
it (no sign-in, no webhooks). Its modules (FastAPI, Jinja2) are imported only when it
runs, so the other commands never pay for them."""

from __future__ import annotations

from typing import Annotated

import typer

from ci_runner.errors import UsageError

DEFAULT_PORT = 8090


def register(app: typer.Typer) -> None:
    @app.command()
    def ui(
        port: Annotated[int, typer.Option(
            help="Port on 127.0.0.1 (0: any free one, printed).")] = DEFAULT_PORT,
    ) -> None:
        """Look at this machine's runs in a browser: live steps and logs, approve,
        re-run, cancel. Serves http://127.0.0.1:PORT/ until Ctrl-C."""
        if not 0 <= port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, not {port}")
        serve_ui(port)


def serve_ui(port: int) -> None:
    import errno
    import socket

    import uvicorn

    from ci_runner.server.pages import local_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on 127.0.0.1 is in use: give another with"
                             " --port (0 picks a free one)") from exc
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    app = local_app()
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", server_header=False,
        timeout_graceful_shutdown=2))
    app.state.server = server  # its live streams end when it stops
    bound = sock.getsockname()[1]
    typer.echo(f"ci-runner ui: http://127.0.0.1:{bound}/ (this machine's runs; Ctrl-C stops)",
               err=False)
    server.run(sockets=[sock])
