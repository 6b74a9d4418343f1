"""The transport plumbing every Vigil service shares, written once.

- ``logs``: JSON log lines and the logging setup of a service's own loggers.
- ``request_context``: the ASGI middleware that accepts or generates the request id, echoes it,
  writes one access log line per request and observes the request metrics.
- ``metrics``: a per-app Prometheus registry holding the request counter and latency histogram;
  services subclass it to add their own metrics.
- ``errors`` and ``handlers``: the problem+json error root and the handlers that render it (and
  framework errors, and unexpected exceptions) as RFC 9457 problem details.
- ``deps``: dependency aliases for what the middleware and the app factory provide.
- ``fast_lane``: a plain-ASGI lane that answers a service's hottest routes in front of FastAPI's
  routing, with the same route labels and the app's own problem handlers.
- ``uvicorn_http`` and ``serve``: uvicorn's protocol writing each response once, and uvicorn's
  command line with the garbage collector paused during start-up.
- ``json_body``: ``OrjsonRoute``, a route class whose JSON request bodies orjson parses.
- ``wiring``: ``wire(app, ...)``, the one call an app factory makes for the handlers, the middleware and
  the metrics dependency.

Services keep what is theirs: error subclasses and slugs, their metrics, extra log fields.
"""
