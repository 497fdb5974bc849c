"""`Authorization: Bearer <key>` -> the caller (`Principal`). Keys come from `tuneforge keys create NAME`."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..jobs.store import Principal, Store

bearer = HTTPBearer(auto_error=False, description="An API key made with `tuneforge keys create NAME`.")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing API key: send the header 'Authorization: Bearer <key>' (an administrator "
                                 "creates keys with `tuneforge keys create NAME`)", headers=_CHALLENGE)
    store: Store = request.app.state.store
    principal = store.authenticate(credentials.credentials.strip())
    if principal is None:
        raise HTTPException(401, "invalid or revoked API key", headers=_CHALLENGE)
    return principal
