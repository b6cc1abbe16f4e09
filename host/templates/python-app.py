"""The {name} plugin, made by `plinth new --lang python`: GET /{name}/{who} greets `who`.

componentize-py builds it against wit/plugin.wit's `plugin-kv` world (README.md); the
`wit_world` modules are the bindings it generates.
"""

import json

from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import Request, Response


def greeting(who: str) -> dict:
    return {"message": f"Hello, {who}!"}


class Handler(exports.Handler):
    def handle(self, request: Request) -> Response:
        who = next((value for key, value in request.params if key == "who"), "")
        log.log(log.Level.DEBUG, f"greeting {who}")
        body = json.dumps(greeting(who)).encode()
        return Response(200, [("content-type", "application/json; charset=utf-8")], body)
