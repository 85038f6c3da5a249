"""The web console: served by the daemon's HTTP server (same port), server-rendered HTML, live updates by
server-sent events, CSS and JS shipped as package data (no build step, nothing from a CDN).

    console = Console(daemon, config.http)
    daemon.pipeline.add_sink(console.live)      # the latest samples and device statuses
    console.register(http_api.app)              # the routes: dcim/app/console/server.py
"""

from dcim.app.console.server import Console

__all__ = ["Console"]
