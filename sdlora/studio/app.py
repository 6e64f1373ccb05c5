"""The studio's FastAPI app: ``create_app(root, token=None)``.

Every page is static HTML/JS under ``static/`` that talks only to the REST API below ``/api`` (OpenAPI at
``/docs``). Rules applied to every request: the token when one is set (``Authorization: Bearer T``, the
``X-Sdlora-Token`` header, ``?token=T``, or the cookie the index page sets from it), and a body size limit.
Errors are JSON ``{"error": sentence, "field": name-or-null}``: 403 for a path outside the root, 404 for a
missing one, 409 for a conflict, 413 for a body over the limit, 422 for invalid input.
"""
from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdlora.errors import SdloraError
from sdlora.studio import api_adapters, api_datasets, api_generate, api_jobs, api_tools, api_train
from sdlora.studio.context import Conflict, Studio
from sdlora.studio.paths import NotFound, PathRefused
from sdlora.studio.trainconfig import field_of

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20  # JSON bodies
MAX_UPLOAD = 20 << 20  # image uploads
UPLOAD_PATH = "/api/datasets/upload"
COOKIE = "sdlora_token"


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


class Guard:
    """ASGI middleware: token check and body size limit, before any route runs (SSE included)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    def _token_ok(self, scope) -> bool:
        if self.token is None:
            return True
        from starlette.requests import Request as _Req

        req = _Req(scope)
        given = [req.headers.get("x-sdlora-token"), req.query_params.get("token"), req.cookies.get(COOKIE)]
        auth = req.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._token_ok(scope):
            resp = _error(401, "this studio needs its token: add ?token=... to the address (it was printed when "
                          "the server started), or send the header Authorization: Bearer <token>")
            return await resp(scope, receive, send)
        limit = MAX_UPLOAD if scope["path"] == UPLOAD_PATH else MAX_BODY
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            resp = _error(413, f"the request body is over the limit of {limit // (1 << 20)} MB", "body")
            return await resp(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            resp = _error(413, f"the request body is over the limit of {limit // (1 << 20)} MB", "body")
            await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(PathRefused)
    async def refused(_: Request, exc: PathRefused):
        return _error(403, str(exc), exc.field)

    @app.exception_handler(NotFound)
    async def missing(_: Request, exc: NotFound):
        return _error(404, str(exc), exc.field)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict):
        return _error(409, str(exc), exc.field)

    @app.exception_handler(SdloraError)
    async def user_error(_: Request, exc: SdloraError):
        return _error(422, str(exc), getattr(exc, "field", None) or field_of(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = list(first.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
        return _error(422, f"{field or 'the request body'}: {first.get('msg', 'invalid value')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))


def create_app(root: str | Path, token: str | None = None, *, run_jobs: bool = True) -> FastAPI:
    """The studio app over ``root`` (every path the API takes stays inside it). ``token``: required on
    every request when set. ``run_jobs=False`` queues jobs without running them (tests)."""
    studio = Studio(Path(root).resolve())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if run_jobs:
            studio.runner.start()
        try:
            yield
        finally:
            studio.close()

    app = FastAPI(title="sdlora studio", version="1", lifespan=lifespan,
                  description="Datasets, training jobs, adapters, generation and tools of sdlora over REST.")
    app.state.studio = studio
    _handlers(app)
    for module in (api_datasets, api_train, api_jobs, api_adapters, api_generate, api_tools):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request):
        resp = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
        if token is not None and request.query_params.get("token"):
            resp.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
        return resp

    @app.get("/api/health", tags=["studio"])
    def health() -> dict:
        return {"ok": True, "root": str(studio.root)}

    app.add_middleware(Guard, token=token)
    return app
