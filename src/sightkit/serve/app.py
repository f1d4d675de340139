"""``sightkit serve``: the HTTP API (FastAPI) around trained models, with dynamic batching.

Endpoints (the OpenAPI schema is at ``/openapi.json``, browsable at ``/docs``):

- ``POST /v1/predict``: one or more images (multipart field ``images``) -> per image what
  ``sightkit.load(weights)(image)`` returns, as ``Results.to_dict()``, for weights of any
  task (detect, segment with the mask as COCO RLE or PNG, pose, face_detect, face);
  :mod:`sightkit.serve.predict`;
- ``GET /v1/model``: task, model, classes, input size, weights hash, precision, batching and limits;
- ``GET /healthz``, ``GET /metrics`` (Prometheus text format);
- ``/v1/face/...`` (with ``face_weights=``): enrol, identify, verify, delete, list, on a
  persistent SQLite gallery (:mod:`sightkit.serve.face`);
- ``GET /``: a web page to try it (upload or drop an image, see the boxes and a table).

There are no ``/docs`` pages: Swagger UI loads its scripts from a CDN, which an offline
machine cannot reach, so the schema is only served as JSON. Who may call what is decided by
:mod:`sightkit.serve.security` (loopback by default, ``Host`` and ``Origin`` checks, the key).

Every error is JSON ``{"detail": ..., "error": ...}`` with a 4xx status when the request is at
fault (not an image, damaged, too large, too many pixels or files, bad landmarks or names, a
bad key, another site's page), 503 when the server is overloaded, 504 when the answer takes
longer than ``timeout_s``. An unexpected failure is a JSON 500 that never closes the
connection (:class:`CatchAll`). On SIGTERM the server stops accepting connections and
finishes every request already received before the models are released.
Uploads are decoded and resized in FastAPI's thread pool, the model runs in one inference
thread fed by a :class:`~sightkit.serve.batching.DynamicBatcher`, and the event loop only
moves bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sightkit.predictor import load, resolve_device
from sightkit.serve.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from sightkit.serve.config import ServeConfig, check_config, max_upload_bytes, read_api_key
from sightkit.serve.errors import ServeError
from sightkit.serve.images import decode_image
from sightkit.serve.metrics import ServeMetrics
from sightkit.serve.predict import PredictService
from sightkit.serve.schemas import ErrorBody, Health, ModelInfo, PredictResponse
from sightkit.serve.security import Guard, allowed_hosts, key_dependency

if TYPE_CHECKING:
    from sightkit.serve.face import FaceService

LOG = logging.getLogger("sightkit.serve")
STATIC = Path(__file__).parent / "static"
#: Error statuses the API answers, with the shared body, for the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "damaged image or malformed request"),
        (401, "missing or wrong X-API-Key (when the server has a key)"),
        (403, "a Host this server does not answer to, or another site's page"),
        (413, "upload, file count or pixel count over the limit"),
        (422, "a missing or invalid field, bad landmarks, an image too thin, no face found"),
        (415, "the content is not an allowed image type"),
        (404, "no such model, person or path"),
        (500, "the model failed (the server goes on)"),
        (503, "overloaded or shutting down"),
        (504, "no answer within timeout_s"),
    )
}
# Codes for statuses that Starlette or FastAPI raise themselves (unknown path, body limit, ...).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
}


class Server:
    """What the app holds: the models, their batchers, the gallery, the metrics.

    Args:
        config: the settings.
        api_key: the key; ``None`` reads ``api_key_file`` or ``$SIGHTKIT_API_KEY``.
    """

    def __init__(self, config: ServeConfig, api_key: str | None = None) -> None:
        from sightkit.tasks.common import read_metadata

        self.api_key = read_api_key(config) if api_key is None else api_key
        check_config(config, self.api_key)
        task = read_metadata(config.weights).get("task") if config.weights else None
        if task == "face" and not config.face_weights:  # face weights given as weights=: the face API too
            config = dataclasses.replace(config, face_weights=config.weights)
        self.config = config
        self.device = resolve_device(config.device)
        self.metrics = ServeMetrics()
        # One inference thread for every model: on a CPU two models computing at once only
        # slow each other down, and on a GPU they would share one stream anyway.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sightkit-infer")
        self.predictor: PredictService | None = None
        self.batchers: dict[str, DynamicBatcher[Any, Any]] = {}
        self.face: FaceService | None = None
        if config.weights:
            self.predictor = PredictService(
                load(config.weights, self.device), config.weights, fixed_options(config, task), top_k=config.top_k
            )
            self.batchers["predict"] = self._batcher(self.predictor.name, self.predictor.infer, self.predictor.group)
        if config.face_weights:
            from sightkit.eval.face_quality import QualityThresholds
            from sightkit.serve.face import FaceService

            self.face = FaceService(
                config.face_weights,
                config.gallery,
                self.device,
                threshold=config.face_threshold,
                detector=config.face_detector,
                wheel=config.wheel,
                quality=QualityThresholds(config.min_face, config.max_yaw, config.min_sharpness, config.min_score),
            )
            self.batchers["face"] = self._batcher(self.face.name, self.face.infer)
            if self.face.detector is not None:
                # Images of any size, one at a time: the detector resizes each on its own.
                self.batchers["face_detect"] = self._batcher("face_detect", self.face.detect)
        #: FastAPI dependencies: enrol and delete need the key; the other /v1 endpoints with protect_reads.
        self.write_key = key_dependency(self.api_key, needed=True)
        self.read_key = key_dependency(self.api_key, needed=config.protect_reads)

    def _batcher(
        self, name: str, infer: Callable[[list[Any]], list[Any]], group: Callable[[Any], Any] | None = None
    ) -> DynamicBatcher[Any, Any]:
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            infer,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            max_queue=self.config.max_queue,
            executor=self.executor,
            on_batch=lambda size, seconds: self.metrics.observe_batch(name, size, seconds),
            group=group,
        )
        self.metrics.track_queue(name, lambda: batcher.queued)
        return batcher

    async def start(self) -> None:
        for batcher in self.batchers.values():
            await batcher.start()

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        self.executor.shutdown(wait=True)
        if self.face is not None:
            self.face.close()

    async def run(self, which: str, item: Any) -> Any:
        """``item``'s answer from the ``which`` batcher, with the errors mapped to statuses."""
        try:
            return await self.batchers[which].submit(item, timeout=self.config.timeout_s)
        except QueueFullError as error:
            raise ServeError(503, "overloaded", f"the server is overloaded ({error}); retry later") from None
        except BatcherClosedError:
            raise ServeError(503, "shutting_down", "the server is shutting down") from None
        except TimeoutError:
            raise ServeError(
                504, "timeout", f"no answer within timeout_s={self.config.timeout_s} s (the server is busy)"
            ) from None
        except Exception as error:  # the model failed (e.g. out of memory): log it, answer 500, go on
            LOG.exception("inference failed")
            raise ServeError(500, "inference_failed", f"inference failed: {type(error).__name__}: {error}") from None

    async def prepare(self, name: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in the thread pool: the per-upload work before the model (resize,
        align). A failure there is the upload's (e.g. an image too thin to resize to the model's
        input): a 422 naming the upload, never a 500."""
        try:
            return await run_in_threadpool(function, *args)
        except (ValueError, RuntimeError) as error:
            raise ServeError(
                422, "unusable_image", f"{name}: cannot be prepared for the model ({type(error).__name__}: {error})"
            ) from None

    async def read_images(self, uploads: list[UploadFile]) -> list[tuple[str, torch.Tensor]]:
        """Decode every upload (in the thread pool); the first bad one fails the request."""
        if len(uploads) > self.config.max_images:
            raise ServeError(
                413, "too_many_images", f"{len(uploads)} images in one request; max_images={self.config.max_images}"
            )
        decoded = []
        for index, upload in enumerate(uploads):
            name = upload.filename or f"image {index}"
            data = await upload.read()
            image = await run_in_threadpool(decode_image, data, name, self.config.max_pixels, self.config.max_aspect)
            decoded.append((name, image))
        return decoded

    def info(self) -> dict[str, Any]:
        config = self.config
        info: dict[str, Any] = {
            "task": None,
            "device": str(self.device),
            "conf": config.conf,
            "top_k": config.top_k,
            "batching": {
                "max_batch": config.max_batch,
                "max_wait_ms": config.max_wait_ms,
                "max_queue": config.max_queue,
            },
            "limits": {
                "max_upload_bytes": max_upload_bytes(config),
                "max_images": config.max_images,
                "max_pixels": config.max_pixels,
                "max_aspect": config.max_aspect,
                "timeout_s": config.timeout_s,
            },
            "face": None,
        }
        if self.predictor is not None:
            info.update(self.predictor.info())
        if self.face is not None:
            info["face"] = {**self.face.info(), "api_key_required": bool(self.api_key)}
        return info


class CatchAll:
    """ASGI middleware, outermost: an exception that escapes the app becomes a JSON 500 (when no
    answer has started) and goes no further.

    Starlette answers an unexpected exception and then raises it again, for the server to log;
    uvicorn then closes the connection, so that the client's next request on that keep-alive
    connection is reset. Here it is logged and stopped, and the connection stays usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as error:
            LOG.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _error(500, "internal", f"internal error: {type(error).__name__}: {error}")(scope, receive, send)


def fixed_options(config: ServeConfig, task: str | None) -> dict[str, Any]:
    """The predictor options that come from the server's settings: the precision, a pose
    model's person detector, a face embedder's face detector (face_detect weights; MTCNN only
    serves the face endpoints). The face endpoints embed in float32 whatever the precision: the
    gallery's faces are compared with the faces of every later request."""
    options: dict[str, Any] = {"precision": config.precision}
    if task == "pose" and config.person_detector:
        options["detector"] = config.person_detector
    if task == "face":
        options["detector"] = config.face_detector if config.face_detector.endswith(".safetensors") else None
    return options


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI lets HTTP
    exceptions from body parsing through, so the exception handlers answer it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes (max_upload_mb)")


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than ``limit`` bytes with a JSON 413.

    A ``Content-Length`` over the limit is refused before anything is read; a body without
    one (chunked) is counted as it arrives and refused as soon as it passes the limit, so a
    client can never make the server buffer more than ``limit`` bytes.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _error(400, "bad_request", f"Content-Length must be a number of bytes, got {declared!r}")(
                scope, receive, send
            )
            return
        if declared is not None and int(declared) > self.limit:
            await _error(413, "too_large", BodyTooLarge(self.limit).detail)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class RequestMetrics:
    """ASGI middleware: count each HTTP request by route and status and time it.

    The route's path template (``/v1/face/{name}``), not the path, labels the metrics, so that
    their number stays bounded; paths that match no route count as ``other``.
    """

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "error": code}, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(config: ServeConfig, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``config.weights`` (and ``config.face_weights``).

    The models are loaded here, so that bad weights fail before a server starts; the batchers
    start and stop with the app's lifespan (``with TestClient(app)`` or uvicorn).

    Args:
        config: the settings.
        api_key: the key clients must send (``None``: read ``api_key_file`` or ``$SIGHTKIT_API_KEY``).

    Raises:
        ValueError, FileNotFoundError: bad settings or weights.
    """
    server = Server(config, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.close()

    app = FastAPI(
        title="sightkit",
        summary="Detections (and face recognition) from a model trained with sightkit.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: not offline (module docstring)
        redoc_url=None,
        # Starlette refuses more files with a bare 400; one more than allowed lets read_images
        # answer the clearer 413 for requests just over the limit.
        form_limits={"max_files": config.max_images + 1, "max_fields": 16},
    )
    app.state.server = server
    app.add_middleware(BodyLimit, limit=max_upload_bytes(config))
    app.add_middleware(Guard, hosts=allowed_hosts(config))  # before any body is read
    app.add_middleware(RequestMetrics, metrics=server.metrics)  # refused requests are counted too
    app.add_middleware(CatchAll)  # added last, so outermost

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return _error(error.status, error.code, error.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return _error(500, "internal", f"internal error: {type(error).__name__}: {error}")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=Health, summary="Liveness: the server answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.get(
        "/v1/model",
        response_model=ModelInfo,
        responses={401: ERRORS[401], 403: ERRORS[403]},
        dependencies=[Depends(server.read_key)],
        summary="What is served: task, classes, input size, weights",
    )
    async def model_info() -> dict[str, Any]:
        info = server.info()
        if server.face is not None:
            info["face"]["identities"] = len(await run_in_threadpool(server.face.gallery.identities))
        return info

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        dependencies=[Depends(server.read_key)],
        response_model_exclude_none=True,
        summary="Predict on images with the served model (any task): Results.to_dict() per image",
    )
    async def predict(
        images: Annotated[list[UploadFile], File(description="one or more JPEG, PNG, WebP or BMP images")],
        conf: Annotated[float | None, Query(ge=0, le=1, description="score threshold (default: the server's)")] = None,
        top_k: Annotated[int | None, Query(ge=1, description="most detections per image (detectors)")] = None,
        mask_format: Annotated[
            Literal["rle", "png"], Query(description="a segmenter's class map: COCO RLE per class, or one PNG")
        ] = "rle",
    ) -> dict[str, Any]:
        service = server.predictor
        if service is None:
            raise ServeError(
                404, "no_model", "this server has no model for /v1/predict (started with face_weights only)"
            )
        decoded = await server.read_images(images)
        options = service.options(config.conf if conf is None else conf, top_k, mask_format)
        prepared = [await server.prepare(name, service.prepare, image, name, options) for name, image in decoded]
        results = await asyncio.gather(*(server.run("predict", item) for item in prepared))
        return {"task": service.task, "model": service.name, "results": results}

    if server.face is not None:
        from sightkit.serve.face import face_router

        app.include_router(face_router(server, ERRORS))
    return app


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (done before the models load, so that a port in use is
    reported at once, as one line)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise ValueError(f"host={host!r} is not an address of this machine: {error}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        raise ValueError(f"cannot listen on host={host!r} port={port}: {error.strerror or error}") from None
    return listener


#: Longest wait, at shutdown, for the request of a connection accepted just before the signal.
ARRIVAL_GRACE_S = 1.0


def graceful_server(settings: Any) -> Any:
    """A ``uvicorn.Server`` whose shutdown also finishes the requests of connections accepted just
    before the signal.

    uvicorn's shutdown stops accepting, lets every request it has parsed finish, and closes
    the connections that have none yet, among them those accepted a moment earlier whose
    request bytes are still on their way: their clients see a reset, not an answer. Here
    those get up to :data:`ARRIVAL_GRACE_S` seconds for their request to arrive first.
    """
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()  # no new connections from here on
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ARRIVAL_GRACE_S
            # ``cycle`` is None on a connection (h11 or httptools) that has not parsed a request yet.
            while loop.time() < deadline and any(
                getattr(connection, "cycle", False) is None for connection in self.server_state.connections
            ):
                await asyncio.sleep(0.02)
            await super().shutdown(sockets)

    return GracefulServer(settings)


def run_server(config: ServeConfig) -> None:
    """Build the app and serve it with uvicorn until SIGINT or SIGTERM (``sightkit serve``).

    On the signal the server stops accepting connections and finishes the requests it has
    received (:func:`graceful_server`; ``timeout_s`` at most, the longest a request may take
    anyway); the app's lifespan then closes the batchers, which by then hold nothing.
    """
    import uvicorn

    api_key = read_api_key(config)
    check_config(config, api_key)
    listener = listen(config.host, config.port)
    try:
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        app = create_app(config, api_key)
        settings = uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, math.ceil(config.timeout_s)),
        )
        graceful_server(settings).run(sockets=[listener])
    finally:
        listener.close()
