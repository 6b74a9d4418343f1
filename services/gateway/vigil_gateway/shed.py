"""Stage *admit*, at the server's door: a scoring request the process is over its bound for is
refused as soon as its head is read, before a task is made for it or its body is parsed.

Saves: the refusal's wait for the event loop's pass (the admitted requests' JSON, encode and
predict calls) and the cost of the request's task, routing and body (see
docs/benchmarks-analysis.md, "Refusals at the door"). Held equal: the answer is the app's own
(``Overloaded`` rendered by ``problem_response``'s pieces, the request id set as the
request-context middleware sets it) and so is its bookkeeping (the refusal counted by
``Admission.over_bound``, the request metrics, one access line); a test holds it byte-equal to the
app's (tests/test_gateway_early_shed.py). Fallback: a server without the door's hook (see
``vigil_servicekit.uvicorn_http``) leaves every request to the app, which refuses it the same way.

Only the process's bound is checked here; the per-key bound and the time budget stay in
``Admission`` (the app). A request that would not be authenticated (401, 403, not ready) is left
to the app, which answers it as before (authentication comes before admission). A body the app
would refuse (422, 413) is not read: an overloaded gateway answers 503 first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi.responses import JSONResponse

from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_gateway.authenticate import Authenticate
from vigil_gateway.errors import GatewayError
from vigil_gateway.limits import Admission
from vigil_gateway.metrics import GatewayMetrics
from vigil_servicekit.request_context import REQUEST_ID_HEADER, log_request, request_id_from

#: The scoring routes (their paths are their templates): the only requests refused at the door.
SCORING_PATHS = frozenset(("/v1/transactions/score", "/v1/transactions/score-batch"))
_ID_HEADER = REQUEST_ID_HEADER.encode()


class DoorShed:
    """``vigil_servicekit.uvicorn_http``'s early-answer hook for the gateway."""

    def __init__(
        self,
        admit: Admission,
        authenticate: Authenticate,
        metrics: GatewayMetrics,
        access_log: logging.Logger,
    ) -> None:
        self.admit = admit
        self.authenticate = authenticate
        self.metrics = metrics
        self.access_log = access_log

    def __call__(
        self, scope: dict[str, Any]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        admit = self.admit
        if admit.in_flight < admit.max_in_flight_overloaded:  # the common case: one comparison
            return None
        path = scope["path"]
        if path not in SCORING_PATHS or scope["method"] != "POST" or scope.get("query_string"):
            return None
        started = time.perf_counter()
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = self.authenticate(authorization, "score")
        except GatewayError:
            return None
        refusal = admit.over_bound(caller)
        if refusal is None:
            return None
        request_id = request_id_from(scope["headers"])
        response = JSONResponse(
            refusal.problem_body(instance=path, request_id=request_id),
            status_code=refusal.status,
            media_type=PROBLEM_MEDIA_TYPE,
            headers=refusal.headers,
        )
        headers = [(k, v) for k, v in response.raw_headers if k != _ID_HEADER]
        headers.append((_ID_HEADER, request_id.encode("latin-1")))
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(path, "POST", refusal.status, elapsed)
        if self.access_log.isEnabledFor(logging.INFO):
            fields = {"key_id": caller.key_id}
            extra = {
                "request_id": request_id,
                "method": "POST",
                "route": path,
                "status": refusal.status,
                "latency_ms": round(elapsed * 1000, 3),
                **fields,
            }
            log_request(self.access_log, extra, fields)
        return refusal.status, headers, bytes(response.body)
