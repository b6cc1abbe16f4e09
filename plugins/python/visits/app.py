"""A Plinth plugin in Python: visit counters in the key-value store.

POST /py/visits/{name} counts a visit and answers {"name", "visits"};
GET  /py/visits/{name} answers the count so far (0 when never visited).

Built by scripts/build-plugins.sh with componentize-py against wit/plugin.wit's
`plugin-kv` world: `wit_world` is the bindings it generates (run
`componentize-py -d wit -w plugin-kv bindings <dir>` to read them).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv, log
from wit_world.imports.types import Request, Response


def json_response(status: int, value) -> Response:
    body = json.dumps(value).encode()
    return Response(status, [("content-type", "application/json; charset=utf-8")], body)


def error(status: int, code: str, detail: str) -> Response:
    """The shared error body (docs/API.md "Errors")."""
    return json_response(status, {"detail": detail, "code": code})


def param(request: Request, name: str) -> str:
    return next((value for key, value in request.params if key == name), "")


class Handler(exports.Handler):
    def handle(self, request: Request) -> Response:
        name = param(request, "name")
        key = f"visits:{name}"
        try:
            if request.method == "POST":
                visits = kv.increment(key, 1, None)
                log.log(log.Level.INFO, f"visit {visits} of {name}")
            else:
                stored = kv.get(key)
                visits = int(stored.decode()) if stored is not None else 0
        except Err as err:
            log.log(log.Level.WARN, f"kv: {err.value}")
            return error(503, "UNAVAILABLE", "A required backend is unavailable: kv")
        return json_response(200, {"name": name, "visits": visits})
