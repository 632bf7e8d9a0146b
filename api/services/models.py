"""Model commands: store an upload and queue its validation, list, fetch, delete."""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.http.errors import Conflict, NotFound, Unprocessable
from api.http.pagination import paginate
from api.http.schemas import ModelUpload
from api.services.quotas import check_storage, lock_tenant
from core.architecture_catalog import ArchitectureError, validate_options
from core.queue import enqueue_model_validation
from api.http.uploads import Upload
from db.blobs import put_blob_file
from db.models import Model, utcnow
from db.session import session_scope

log = logging.getLogger(__name__)


def _same_upload(session: Session, tenant_id: str, fields: dict) -> Model | None:
    """The stored version of this name with these bytes, input, format and architecture, if any."""
    candidates = session.execute(
        select(Model).where(Model.tenant_id == tenant_id, Model.name == fields["name"],
                            Model.sha256 == fields["sha256"], Model.deleted_at.is_(None))
        .order_by(Model.version.desc())
    ).scalars()
    return next((m for m in candidates if all(getattr(m, key) == value for key, value in fields.items())), None)


def _next_version(session: Session, tenant_id: str, name: str) -> int:
    # Deleted versions keep their numbers: a version number always means the same bytes.
    latest = session.execute(
        select(func.max(Model.version)).where(Model.tenant_id == tenant_id, Model.name == name)
    ).scalar_one()
    return (latest or 0) + 1


def create_model(session: Session, tenant_id: str, upload: ModelUpload, file: Upload) -> tuple[Model, bool]:
    """Store the model file and its declared input as the name's next version (a worker validates it
    next), or return the stored version with the same bytes and input; True when it is new."""
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
    fields = {
        "name": upload.name,
        "format": upload.format,
        "task": upload.task,
        "sha256": file.sha256,
        "architecture": upload.architecture if upload.format == "state_dict" else None,
        "architecture_options": options,
        "input_spec": input_spec,
    }
    existing = _same_upload(session, tenant_id, fields)
    if existing is not None:
        return existing, False
    # Refused before the copy when it would not fit; the copy runs without the tenant's lock (its other
    # requests do not wait for a large file), then the check is made again under it.
    check_storage(session, tenant_id, {fields["sha256"]: file.size})
    put_blob_file(session, file.path, file.sha256)
    lock_tenant(session, tenant_id)
    check_storage(session, tenant_id, {fields["sha256"]: file.size})
    for _ in range(5):
        existing = _same_upload(session, tenant_id, fields)
        if existing is not None:
            return existing, False
        model = Model(tenant_id=tenant_id, version=_next_version(session, tenant_id, upload.name),
                      status="validating", **fields)
        try:
            # A savepoint: a concurrent upload of the same name that took this version number
            # undoes only the model row, and the loop takes the next number (or its model).
            with session.begin_nested():
                session.add(model)
            return model, True
        except IntegrityError:
            continue
    raise Conflict(f"model '{upload.name}' is being uploaded concurrently; send the upload again")


def _visible(tenant_id: str):
    return Model.tenant_id == tenant_id, Model.deleted_at.is_(None)


def get_model(session: Session, tenant_id: str, ref: str) -> Model:
    """A model by id, or by name: its latest ready version (the latest version while none is ready)."""
    model = session.execute(select(Model).where(*_visible(tenant_id), Model.id == ref)).scalar_one_or_none()
    if model is None:
        model = session.execute(
            select(Model).where(*_visible(tenant_id), Model.name == ref)
            .order_by((Model.status == "ready").desc(), Model.version.desc()).limit(1)
        ).scalars().first()
    if model is None:
        raise NotFound(f"no model with id or name '{ref}'; GET /v1/models lists your models")
    return model


def list_models(session: Session, tenant_id: str, limit: int, cursor: str | None, name: str | None = None):
    stmt = select(Model).where(*_visible(tenant_id))
    if name is not None:
        stmt = stmt.where(Model.name == name)
    return paginate(session, stmt, Model, limit, cursor)


def delete_model(session: Session, tenant_id: str, model_id: str) -> None:
    get_model(session, tenant_id, model_id).deleted_at = utcnow()


def upload_model(tenant_id: str, upload: ModelUpload, file: Upload) -> tuple[Model, bool]:
    """Commit the model row, then queue its validation on a worker; the same upload again returns
    the stored model (False) without validating it again."""
    with session_scope() as session:
        model, created = create_model(session, tenant_id, upload, file)
    if not created:
        return model, False
    try:
        enqueue_model_validation(model.id)
    except Exception:  # noqa: BLE001 — the row is committed; the reconciler sends it again
        log.exception("could not enqueue validation of model %s", model.id)
    return model, True
