"""Schemathesis hooks for Plinth (scripts/contract.sh loads them through schemathesis.toml).

Two identities, each obtained the way a client would, through the API itself:
- a fresh user (register, then log in) for every operation that takes a token, so nothing
  schemathesis does to "me" (changing its password, deleting it, logging its token out)
  can break the rest of the run: on a 401 schemathesis asks for a token again and gets a
  new user;
- the first superuser (CONTRACT_ROOT_EMAIL / CONTRACT_ROOT_PASSWORD, created by the host at
  start-up) for the superuser routes that cannot harm it: listing, creating and reading
  users, and the admin API's reads. Changing or deleting any user by id stays with the
  fresh users (403), so a generated request can never lock the superuser out mid-run.
"""

from __future__ import annotations

import os
import re
import uuid

import requests
import schemathesis

SUPERUSER_OPERATIONS = re.compile(
    r"^(GET|POST) /api/v1/users/?$|^GET /api/v1/users/\{id\}$|^GET /admin/(plugins|fleet)$"
)


def _label(ctx) -> str:
    return f"{ctx.operation.method.upper()} {ctx.operation.path}"


def _needs_token(ctx) -> bool:
    security = ctx.operation.definition.raw.get("security", [])
    return any(requirement for requirement in security)


def _base(ctx) -> str:
    return ctx.operation.schema.get_base_url().rstrip("/")


def _login(base: str, email: str, password: str) -> str:
    reply = requests.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30
    )
    if reply.status_code != 200:
        raise RuntimeError(f"login as {email} failed: {reply.status_code} {reply.text[:200]}")
    return reply.json()["access_token"]


@schemathesis.auth(refresh_interval=600).apply_to(
    lambda ctx: _needs_token(ctx) and not SUPERUSER_OPERATIONS.match(_label(ctx))
)
class FreshUser:
    def get(self, case, ctx):
        base = _base(ctx)
        suffix = uuid.uuid4().hex[:12]
        email, password = f"contract-{suffix}@example.com", f"pw-{suffix}-contract"
        reply = requests.post(
            f"{base}/api/v1/auth/register",
            json={"email": email, "username": f"contract_{suffix}", "password": password},
            timeout=30,
        )
        if reply.status_code != 201:
            raise RuntimeError(f"register failed: {reply.status_code} {reply.text[:200]}")
        return _login(base, email, password)

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.auth(refresh_interval=600).apply_to(
    lambda ctx: SUPERUSER_OPERATIONS.match(_label(ctx)) is not None
)
class Superuser:
    def get(self, case, ctx):
        return _login(
            _base(ctx), os.environ["CONTRACT_ROOT_EMAIL"], os.environ["CONTRACT_ROOT_PASSWORD"]
        )

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
