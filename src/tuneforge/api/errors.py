"""Every error response has one shape: `{"detail": "<readable message>"}`, and for 422 also
`"problems": [{"field": "training_config.lora_r", "message": "..."}]`, one per problem, in the same words as the
CLI (`SpecError` lines from `tuneforge.spec`)."""

from __future__ import annotations

from typing import Any, TypeAlias

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import Conflict, LimitReached, NotFound, TuneforgeError
from ..serve.engine import EngineOverloadedError
from ..spec import SpecError, describe_errors

# The `responses=` of a route: status code -> its OpenAPI description (FastAPI's own parameter type).
Responses: TypeAlias = dict[int | str, dict[str, Any]]


def split_problem(line: str) -> dict[str, str | None]:
    field, sep, message = line.partition(": ")
    return {"field": field, "message": message} if sep else {"field": None, "message": line}


def problems_response(lines: list[str], status: int = 422) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"detail": "; ".join(lines), "problems": [split_problem(x) for x in lines]}
    )


def request_problems(errors: list[dict[str, Any]]) -> list[str]:
    """FastAPI's validation errors as `field.path: message` lines; a body's own fields lose the `body.` prefix,
    so a payload problem reads exactly as `tuneforge train` reports it."""
    lines: list[str] = []
    rest: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (err.get("ctx") or {}).get("error", "")
            lines.append(f"body: not valid JSON{where}{': ' + reason if reason else ''}")
        elif loc == ("body",) and err.get("type") == "missing":
            lines.append("body: a JSON object is required (send it with Content-Type: application/json)")
        else:
            rest.append({**err, "loc": loc[1:] if loc[:1] == ("body",) else loc})
    if rest:
        lines += describe_errors(rest)
    return lines


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problems_response(request_problems(list(exc.errors())))

    @app.exception_handler(SpecError)
    async def _bad_spec(_request: Request, exc: SpecError) -> JSONResponse:
        return problems_response(exc.problems)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(EngineOverloadedError)
    async def _overloaded(_request: Request, exc: EngineOverloadedError) -> JSONResponse:
        return JSONResponse(
            status_code=503, content={"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after)}
        )

    @app.exception_handler(LimitReached)
    async def _limit(_request: Request, exc: LimitReached) -> JSONResponse:
        return JSONResponse(status_code=429, content={"detail": str(exc)})

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _exc: RecursionError) -> JSONResponse:
        # Python's JSON parser recurses once per nesting level; a body nested thousands deep exhausts the stack.
        return problems_response(
            ["body: nested too deeply to parse (JSON objects and arrays nested more than a few hundred levels)"]
        )

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(TuneforgeError)
    async def _user_error(_request: Request, exc: TuneforgeError) -> JSONResponse:
        line = str(exc)
        if exc.field and not line.startswith(f"{exc.field}:"):
            line = f"{exc.field}: {line}"
        return problems_response([line])
