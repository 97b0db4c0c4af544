"""The admin surface: model updates (``/admin/models/{name}/candidate|rollback``), behind the
bearer token (:class:`~vitkit.serve.auth.AdminGuard`, a router-wide dependency)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from vitkit.serve.auth import AdminGuard
from vitkit.serve.bodies import json_body
from vitkit.serve.errors import HttpProblem
from vitkit.serve.schemas import Candidate, parse, problem_responses, request_body
from vitkit.serve.service import Service
from vitkit.serve.updates import UpdateRefused


def admin_router(service: Service, guard: AdminGuard) -> APIRouter:
    def require_admin(request: Request) -> None:
        """``Authorization: Bearer <token>``: checked before any admin route runs."""
        guard.check(request.headers.get("authorization"),
                    request.client.host if request.client else "unknown")

    router = APIRouter(dependencies=[Depends(require_admin)])
    admin_errors = problem_responses(401, 403, 404, 409, 422, 429)

    @router.post("/admin/models/{name}/candidate", status_code=202, tags=["admin"],
              openapi_extra=request_body(Candidate), responses=admin_errors)
    async def candidate(name: str, request: Request) -> dict[str, Any]:
        body = parse(Candidate, await json_body(request), "candidate")
        try:
            return await service.start_candidate(name, body.bundle, body.variant)
        except UpdateRefused as exc:
            raise HttpProblem(exc.status, "candidate refused", str(exc)) from None

    @router.post("/admin/models/{name}/rollback", tags=["admin"], responses=admin_errors)
    async def rollback(name: str, request: Request) -> dict[str, Any]:
        try:
            return await service.rollback(name)
        except UpdateRefused as exc:
            raise HttpProblem(exc.status, "nothing to roll back", str(exc)) from None

    return router
