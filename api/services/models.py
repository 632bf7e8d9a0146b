"""Model commands: store an upload and queue its validation, list, fetch, delete."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import NotFound, Unprocessable
from api.pagination import paginate
from api.schemas import ModelUpload
from api.services.quotas import check_storage, lock_tenant
from db.blobs import put_blob, sha256_bytes
from db.models import Model, utcnow
from db.session import session_scope
from worker.queue import enqueue_model_validation
from worker.architecture_catalog import ArchitectureError, validate_options

log = logging.getLogger(__name__)


def create_model(session: Session, tenant_id: str, upload: ModelUpload, path: Path) -> Model:
    """Store the model file and its declared input; a worker validates it next."""
    try:
        input_spec = upload.input.normalized()
    except ValueError as exc:
        raise Unprocessable(f"input: {exc}") from None
    options = {}
    if upload.format == "state_dict":
        if not upload.architecture:
            raise Unprocessable("format 'state_dict' needs 'architecture' (see GET /v1/architectures)")
        try:
            options = validate_options(upload.architecture, upload.architecture_options)
        except ArchitectureError as exc:
            raise Unprocessable(str(exc)) from None
    elif upload.architecture:
        raise Unprocessable(f"'architecture' only applies to format 'state_dict', not '{upload.format}'")
    data = path.read_bytes()
    lock_tenant(session, tenant_id)
    check_storage(session, tenant_id, {sha256_bytes(data): len(data)})
    model = Model(
        tenant_id=tenant_id,
        name=upload.name,
        format=upload.format,
        task=upload.task,
        sha256=put_blob(session, data),
        architecture=upload.architecture if upload.format == "state_dict" else None,
        architecture_options=options,
        input_spec=input_spec,
        status="validating",
    )
    session.add(model)
    session.flush()
    return model


def get_model(session: Session, tenant_id: str, model_id: str) -> Model:
    model = session.execute(
        select(Model).where(Model.id == model_id, Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    ).scalar_one_or_none()
    if model is None:
        raise NotFound(f"no model with id '{model_id}'")
    return model


def list_models(session: Session, tenant_id: str, limit: int, cursor: str | None):
    stmt = select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    return paginate(session, stmt, Model, limit, cursor)


def delete_model(session: Session, tenant_id: str, model_id: str) -> None:
    get_model(session, tenant_id, model_id).deleted_at = utcnow()


def upload_model(tenant_id: str, upload: ModelUpload, path: Path) -> Model:
    """Commit the model row, then queue its validation on a worker."""
    with session_scope() as session:
        model = create_model(session, tenant_id, upload, path)
    try:
        enqueue_model_validation(model.id)
    except Exception:  # noqa: BLE001 — the row is committed; validation is retried on resubmit
        log.exception("could not enqueue validation of model %s", model.id)
    return model
