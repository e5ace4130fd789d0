"""The FastAPI dependencies routes declare as parameters: the ``PredictionService`` and the
``Settings`` the app was made with (``create_app`` keeps both on ``app.state``; a route reaches
them through ``Depends``, never a closure), and the caller's user id from ``api/auth.py``. They
are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from smartgrid.api.auth import current_user, docs_user
from smartgrid.config import Settings
from smartgrid.domain.predictions import PredictionService


async def get_service(request: Request) -> PredictionService:
    service: PredictionService = request.app.state.service
    return service


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Service = Annotated[PredictionService, Depends(get_service)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
User = Annotated[str, Depends(current_user)]
DocsUser = Annotated[str, Depends(docs_user)]
