"""Callers: `Authorization: Bearer <key>` mapped to a user by API_KEYS.

With API_KEYS unset every caller is one anonymous tenant (development). Jobs belong to the
user who created them; the routes answer 404 (not 403) for anyone else's job, so job ids
cannot be probed.
"""

from __future__ import annotations

import hmac

from flask import current_app, g, request

from .problems import Problem

ANONYMOUS = "anonymous"


def current_owner() -> str:
    """The caller's user name; raises a 401 problem for a missing or unknown key."""
    if "owner" in g:
        return g.owner
    keys: dict[str, str] = current_app.extensions["dlkit"].api_keys
    if not keys:
        g.owner = ANONYMOUS
        return g.owner
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Send 'Authorization: Bearer <api key>'.")
    # Compare against every key in constant time, so timing does not reveal a prefix.
    owner = None
    for key, user in keys.items():
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            owner = user
    if owner is None:
        raise _unauthorized("Unknown API key.")
    g.owner = owner
    return owner


def authenticate() -> None:
    """before_request of every route that has an owner: an unknown caller gets 401 before anything
    else is checked, so it learns nothing (not even whether a job exists). CORS preflights carry no
    key and pass."""
    if request.method != "OPTIONS":
        current_owner()


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401, "Unauthorized", detail, slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="dlkit"'}
    )
