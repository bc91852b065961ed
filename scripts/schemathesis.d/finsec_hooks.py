"""Schemathesis hooks for scripts/schemathesis: a bearer token that outlives the fuzzer.

Generated requests end sessions (logout, logout-all, revoking a session by id, forced logout
and deactivation by the admin API), so one token given on the command line would turn every
later request into a 401. This provider logs the demo user in, keeps the token until the
service answers 401, then logs in again; if the fuzzer has deactivated the demo user, it
reactivates it first through the admin API.
"""

import base64
import os

import requests
import schemathesis

BASE = os.environ["FINSEC_BASE_URL"]
ADMIN_KEY = os.environ["FINSEC_ADMIN_KEY"]
# Token introspection is asked by a resource server (HTTP Basic), not by a user.
INTROSPECTION = "Basic " + base64.b64encode(
    os.environ["FINSEC_INTROSPECTION_CLIENT"].encode()
).decode()
CREDENTIALS = {"email": "john.doe@example.com", "password": "password123"}


def _login():
    return requests.post(f"{BASE}/api/auth/login", json=CREDENTIALS, timeout=10)


def _reactivate(user_id):
    requests.post(
        f"{BASE}/api/admin/users/{user_id}/activate",
        headers={"X-Admin-Key": ADMIN_KEY},
        json={"reason": "scripts/schemathesis: reactivate the demo user"},
        timeout=10,
    ).raise_for_status()


# The demo user's id, from the first login (before any generated request can deactivate it).
_first = _login()
_first.raise_for_status()
USER_ID = _first.json()["user"]["id"]


def login():
    response = _login()
    if response.status_code == 403:  # deactivated by a generated admin request
        _reactivate(USER_ID)
        response = _login()
    if response.status_code != 200 or "access_token" not in response.json():
        raise RuntimeError(f"demo login failed: {response.status_code} {response.text}")
    return response.json()["access_token"]


@schemathesis.auth()
class DemoUser:
    def get(self, case, ctx):
        return login()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        if case.operation.path == "/api/auth/introspect":
            case.headers["Authorization"] = INTROSPECTION
        else:
            case.headers["Authorization"] = f"Bearer {data}"
