"""The FastAPI app of the gateway's HTTP port: OpenAI routes, /health, /metrics, auth, size limit.

    request -> ApiKeyMiddleware (401 unless open path) -> BodySizeLimit (413; 408 for a slow body) -> route
            -> OpenAiRoutes -> GenerationPipeline (the gRPC path) -> JSON or server-sent events

`/health` is always open; `/metrics` is served only when a prometheus_client registry is given,
open unless metrics_require_api_key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.errors import AliseError, Unauthenticated
from services.gateway.auth import ApiKeys
from services.gateway.generation import GenerationPipeline
from services.gateway.http.errors import HttpApiError, error_body, error_response, from_exception
from services.gateway.http.limits import ApiKeyMiddleware, BodySizeLimitMiddleware
from services.gateway.http.routes import OpenAiRoutes
from services.gateway.model_info import ServedModelCache

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class HttpAppSettings:
    """The slice of GatewayConfig the HTTP app needs."""

    max_request_bytes: int  # larger bodies get 413
    metrics_require_api_key: bool = False  # /metrics behind the API key (when keys are set)
    request_timeout_s: float | None = None  # deadline of a generation without a `timeout` field; None = none
    body_timeout_s: float | None = None  # a body not received this long after its headers gets 408; None = none


def create_http_app(
    pipeline: GenerationPipeline,
    served_models: ServedModelCache,
    settings: HttpAppSettings,
    *,
    api_keys: ApiKeys | None = None,
    metrics_registry: object | None = None,  # a prometheus_client.CollectorRegistry; None = no /metrics
    is_serving: Callable[[], bool] = lambda: True,
) -> FastAPI:
    """Builds the app; every handler shares the gRPC servicer's pipeline and model cache."""
    app = FastAPI(title="alise", docs_url=None, redoc_url=None, openapi_url=None)
    routes = OpenAiRoutes(pipeline, served_models, request_timeout_s=settings.request_timeout_s)
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", routes.model, methods=["GET"])
    app.add_api_route(HEALTH_PATH, _health_route(is_serving), methods=["GET"])
    open_paths = {HEALTH_PATH}
    if metrics_registry is not None:
        app.add_api_route(METRICS_PATH, _metrics_route(metrics_registry), methods=["GET"])
        if not settings.metrics_require_api_key:
            open_paths.add(METRICS_PATH)
    _install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes, body_timeout_s=settings.body_timeout_s
    )
    if api_keys is not None and api_keys.enabled:  # added last = runs first
        app.add_middleware(ApiKeyMiddleware, api_keys=api_keys, open_paths=frozenset(open_paths))
    return app


def _health_route(is_serving: Callable[[], bool]) -> Callable[[], Response]:
    def health() -> Response:
        """200 while serving, 503 while draining (load balancers stop sending new requests)."""
        if is_serving():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "draining"}, status_code=503)

    return health


def _metrics_route(registry: object) -> Callable[[], Response]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]

    return metrics


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI-shaped JSON with the status errors.py maps it to."""

    async def on_api_error(request: Request, error: Exception) -> Response:
        failure = from_exception(error)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else None
        return error_response(failure, headers)

    async def on_body_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg', 'invalid body')}" if param else first.get("msg", "invalid body")
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(error_body(message, error_type), status_code=error.status_code)

    app.add_exception_handler(HttpApiError, on_api_error)
    app.add_exception_handler(AliseError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_body_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_api_error)
