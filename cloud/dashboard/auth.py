"""Accounts, login, roles, session timeout and CSRF protection for the dashboard.

Passwords are stored as werkzeug scrypt hashes. The session is Flask's signed cookie (HttpOnly,
SameSite=Lax) holding the username, role, a per-session CSRF token and the time of the last
request; a session idle longer than ``dashboard.session_timeout_min`` is cleared. Every POST
(dashboard and phone page alike) must carry that CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``), else 400.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from cloud.storage import Storage
from contract import utc_now

ROLES = ("dermatologist", "admin")
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{2,64}$"
MIN_PASSWORD = 10
LOGIN_FAILURES = 5  # per username per LOGIN_WINDOW before further tries are refused
LOGIN_WINDOW = timedelta(minutes=10)
# Checked against when the username is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))

bp = Blueprint("auth", __name__)


class AccountError(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")
    return generate_password_hash(password)  # scrypt


def add_user(storage: Storage, username: str, password: str, role: str, *, replace: bool = False) -> bool:
    import re

    if not re.fullmatch(USERNAME_PATTERN, username):
        raise AccountError("username must be 2-64 characters of letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    return storage.add_user(username, hash_password(password), role, replace=replace)


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Every state-changing request carries the session's CSRF token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        abort(400, description="The form has expired or is missing its security token; reload the page and retry.")


def load_user(timeout: timedelta) -> None:
    """Who is logged in (``g.user``), ending sessions idle for longer than the timeout."""
    g.user = None
    username = session.get("user")
    if not username:
        return
    now = time.time()
    if now - session.get("seen", 0) > timeout.total_seconds():
        session.clear()
        g.session_expired = True
        return
    user = current_app.extensions["skinscan_dashboard"].storage.user(username)
    if user is None or user["disabled"]:
        session.clear()
        return
    g.user = {"username": user["username"], "role": user["role"]}
    if request.endpoint not in ("views.events",):  # the live stream is not activity
        session["seen"] = now


def require(*roles: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Login required (redirect to the login page); with roles, any other role gets 403."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if g.user is None:
                if getattr(g, "session_expired", False):
                    flash("Your session expired; please log in again.")
                return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))
            if roles and g.user["role"] not in roles:
                audit("denied", request.path, f"role {g.user['role']}")
                abort(403)
            return view(*args, **kwargs)

        return inner

    return wrap


def audit(action: str, target: str = "", detail: str = "", actor: str | None = None) -> None:
    state = current_app.extensions["skinscan_dashboard"]
    who = actor or (g.user["username"] if getattr(g, "user", None) else "anonymous")
    state.storage.audit(who, action, target, detail, request.remote_addr or "")


def _safe_next(value: str | None) -> str:
    # Only a path on this site: never an absolute URL (open redirect).
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return url_for("views.queue")


@bp.route("/login", methods=["GET", "POST"])
def login():
    state = current_app.extensions["skinscan_dashboard"]
    error = None
    status = 200
    if request.method == "POST":
        username = request.form.get("username", "").strip()[:64]
        password = request.form.get("password", "")
        since = utc_now() - LOGIN_WINDOW
        if state.storage.count_audit("login.failed", username, since) >= LOGIN_FAILURES:
            audit("login.refused", username, "too many failures", actor=username or "anonymous")
            error, status = "Too many failed attempts; wait a few minutes and try again.", 429
        else:
            user = state.storage.user(username) if username else None
            ok = check_password_hash(user["password_hash"] if user else _DUMMY_HASH, password)
            if user and ok and not user["disabled"]:
                session.clear()
                session.permanent = True
                session["user"], session["seen"] = user["username"], time.time()
                csrf_token()
                audit("login", user["username"], actor=user["username"])
                return redirect(_safe_next(request.args.get("next")))
            audit("login.failed", username, actor=username or "anonymous")
            error, status = "Wrong username or password.", 401
    return render_template("login.html", error=error, next=request.args.get("next", "")), status


@bp.post("/logout")
def logout():
    if session.get("user"):
        audit("logout", session["user"], actor=session["user"])
    session.clear()
    return redirect(url_for("auth.login"))
