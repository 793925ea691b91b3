"""An HTTP service around a :class:`~clipguard.guard.Guard` (optional extra ``clipguard[serve]``:
Starlette and Uvicorn).

- ``POST /classify`` -- body: one PNG or JPEG image (``Content-Type: image/png`` or
  ``image/jpeg``) -> JSON with the fields of :class:`~clipguard.guard.GuardResult`.
- ``GET /health`` -- ``{"status": "ok", ...}`` with the guard's counts.
- ``GET /alarms`` -- the online Algorithm 2's alarms so far.

Bad requests get a 4xx with ``{"error": ...}`` and never reach the model: a wrong content type
(415), an empty body (400), a body over ``max_bytes`` (413), data that is not a readable image
(400), an image over ``max_pixels`` -- measured from its header, so a decompression bomb is
refused before it is inflated (413).
"""

from __future__ import annotations

from typing import Any

from .guard import Guard
from .models.base import require

__all__ = ["MAX_BYTES", "MAX_PIXELS", "create_app", "run"]

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(guard: Guard, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Any:
    """The ASGI app serving ``guard``."""
    require("starlette", extra="serve", purpose="the HTTP service")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from .probe import decode_image

    async def body_of(request: Request) -> bytes:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            raise _BadRequest(415, f"Content-Type must be image/png or image/jpeg, got {ctype or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise _BadRequest(413, f"body of {int(declared):,} bytes is over the {max_bytes:,} byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():  # bounded even when Content-Length lies or is absent
            size += len(chunk)
            if size > max_bytes:
                raise _BadRequest(413, f"body is over the {max_bytes:,} byte limit")
            chunks.append(chunk)
        if size == 0:
            raise _BadRequest(400, "empty body: send one PNG or JPEG image")
        return b"".join(chunks)

    async def classify(request: Request) -> JSONResponse:
        try:
            data = await body_of(request)
            try:
                image = await run_in_threadpool(decode_image, data, max_pixels, formats=("png", "jpeg"))
            except ValueError as exc:
                raise _BadRequest(413 if "pixel limit" in str(exc) else 400, str(exc)) from None
        except _BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        result = (await run_in_threadpool(guard.check, image))[0]
        return JSONResponse(result.to_dict())

    async def health(request: Request) -> JSONResponse:
        stats = guard.stats()
        return JSONResponse({"status": "ok", "model": getattr(guard.model, "spec", ""), "mode": stats["mode"],
                             "requests": stats["requests"], "alarms": len(stats["alarms"])})

    async def alarms(request: Request) -> JSONResponse:
        return JSONResponse({"alarms": [a.to_dict() for a in guard.alarms], "requests": guard.stats()["requests"]})

    return Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/health", health),
                             Route("/alarms", alarms)])


def run(guard: Guard, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning") -> None:
    """Serve ``guard`` until interrupted (Uvicorn)."""
    uvicorn = require("uvicorn", extra="serve", purpose="the HTTP service")
    uvicorn.run(create_app(guard), host=host, port=port, log_level=log_level)
