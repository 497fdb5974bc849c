"""`Authorization: Bearer <key>` -> the caller (`Principal`). Keys come from `tuneforge keys create NAME`.

Routes take what they need as annotated parameters: `principal: CurrentPrincipal`, `store: StoreDep`,
`settings: SettingsDep`, `storage: StorageDep` (FastAPI's `Annotated` dependencies: the type says what it is, the dependency where it
comes from).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..jobs.store import Store
from ..keys import Principal
from ..settings import Settings
from ..storage import Storage
from .limits import client_address, throttled

bearer = HTTPBearer(auto_error=False, description="An API key made with `tuneforge keys create NAME`.")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_storage(request: Request) -> Storage | None:
    """The shared storage (TUNEFORGE_STORAGE), or None on a one-machine service."""
    storage: Storage | None = request.app.state.storage
    return storage


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage | None, Depends(get_storage)]


def get_principal(
    request: Request, store: StoreDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            401,
            "missing API key: send the header 'Authorization: Bearer <key>' (an administrator "
            "creates keys with `tuneforge keys create NAME`)",
            headers=_CHALLENGE,
        )
    throttle = request.app.state.auth_throttle
    refusal = throttled(throttle, request)
    if refusal is not None:
        raise refusal
    principal = store.authenticate(credentials.credentials.strip())
    if principal is None:
        throttle.failed(client_address(request))
        raise HTTPException(401, "invalid or revoked API key", headers=_CHALLENGE)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
