"""GET /models: the models serving (the registry's set, or the bundled ones) and their metadata.

Its body is documented as ``ModelList`` (``responses=``) but not validated on the way out: the
route returns its own ``JSONResponse`` so that Cache-Control stays the first header (FastAPI
appends a header set on its injected ``Response`` after content-length and content-type), and
the metadata is served as the models' files give it (``ModelMetadata.from_dict`` checks no types).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from smartgrid.api import schemas
from smartgrid.api.deps import Service, User
from smartgrid.api.openapi import problem_responses

router = APIRouter(tags=["models"])


@router.get("/models", responses={200: {"model": schemas.ModelList}, **problem_responses(401, 403)})
async def models(user: User, svc: Service) -> JSONResponse:
    svc.refresh_models()
    body = {"set_id": svc.models.set_id, "models": svc.models.describe()}
    return JSONResponse(body, headers={"Cache-Control": "max-age=3600"})
