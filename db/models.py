"""SQLAlchemy 2.x tables of ShiftScore."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def before(moment: datetime | None, cutoff: datetime) -> bool:
    """Whether a stored moment (None: never) is earlier than `cutoff`."""
    if moment is None:
        return True
    if moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=cutoff.tzinfo)
    return moment < cutoff


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The token's first characters, shown by `shiftscore token list` (NULL for tokens made before 0006).
    token_prefix: Mapped[str | None] = mapped_column(String(16), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Blob(Base):
    """Content-addressed bytes, kept in the database so any worker on any host reaches them."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # Blobs stored before 0009 hold their bytes here; newer ones in blob_chunks (db/blobs.py).
    data: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlobChunk(Base):
    """One fixed-size piece of a blob: no value comes near PostgreSQL's 1 GB limit, whatever the blob's size."""

    __tablename__ = "blob_chunks"

    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # NULL for the built-in datasets every tenant sees.
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    task: Mapped[str] = mapped_column(String(20), default="classification")
    sha256: Mapped[str] = mapped_column(String(64))
    # processing (the upload is stored, a worker ingests it), ready, or invalid (`error` says why).
    status: Mapped[str] = mapped_column(String(20), default="ready", server_default="ready")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # The uploaded file while a worker ingests it; NULL once ingested (the arrays are kept, not the file).
    upload_blob: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), index=True, default=None)
    preprocess: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    filename: Mapped[str | None] = mapped_column(String(300), default=None)  # the upload's, for messages
    # An image folder's class names (label order); an NPZ's optional `class_names`.
    class_names: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    # NULL once the dataset is deleted and its blobs reclaimed (db/blobs.py); NULL while processing.
    images_blob: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    targets_blob: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    # Each sample's relative path in its image folder (a JSON list in a blob), or an NPZ's `files`.
    files_blob: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), index=True, default=None)
    num_samples: Mapped[int | None] = mapped_column(Integer, default=None)
    channels: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    num_classes: Mapped[int | None] = mapped_column(Integer, default=None)
    max_label: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # Ingestion holds a lease like a chunk (db.leases): attempt count, holder, heartbeat.
    ingest_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ingest_worker: Mapped[str | None] = mapped_column(String(200), default=None)
    ingest_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version", name="uq_models_tenant_name_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # New bytes (or input) under a name make the next version; the name alone means its latest ready one.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    format: Mapped[str] = mapped_column(String(20))
    task: Mapped[str] = mapped_column(String(20), default="classification")
    # NULL once the model is deleted and its blob reclaimed (db/blobs.py).
    sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    architecture: Mapped[str | None] = mapped_column(String(100))
    architecture_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_spec: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default="validating")
    error: Mapped[str | None] = mapped_column(Text)
    num_parameters: Mapped[int | None] = mapped_column(BigInteger)
    num_outputs: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # Validation holds a lease like a chunk (db.leases): attempt count, holder, heartbeat.
    validation_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    validation_worker: Mapped[str | None] = mapped_column(String(200))
    validation_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # One forward image's time in the sandbox at validation: the sweep's per-batch deadline scales with it.
    seconds_per_image: Mapped[float | None] = mapped_column(Float)
    # Chosen once at validation (worker/sandbox/backends.py): backend, batch size, each candidate's
    # agreement figures and timings. NULL for models validated before backends were chosen.
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Evaluation(Base):
    """One sweep; its id is also the Celery task id."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_evaluations_idempotency"),
        Index("ix_evaluations_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_evaluations_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    request: Mapped[dict[str, Any]] = mapped_column()
    sweep_key: Mapped[str] = mapped_column(String(64), index=True)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    progress_done: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # Fixed at submission, so the planner and workers never re-derive them: samples swept
    # (max_samples of the dataset, or all) and views per sample (the grid and the reference).
    num_samples: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    images_per_sample: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_detail: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the sweep runs on, fixed at submission from the model's runtime and the request.
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # Webhook: POSTed at least once when the evaluation ends (db/webhooks.py).
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(default=None)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    webhook_error: Mapped[str | None] = mapped_column(Text, default=None)


class EvaluationChunk(Base):
    """A slice `[start, stop)` of an evaluation's samples that one worker sweeps at a time.

    `done` is the high-water mark of images swept (so a retry never counts twice);
    `position` and `tally` are the checkpoint a retry resumes from, and the result once done.
    """

    __tablename__ = "evaluation_chunks"
    __table_args__ = (Index("ix_evaluation_chunks_status", "status"),)

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)
    tally: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)


class ShiftResult(Base):
    __tablename__ = "shift_results"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    dx: Mapped[float] = mapped_column(Float)
    dy: Mapped[float] = mapped_column(Float)
    # Null unless the sweep names angle, scale or brightness (SPEC 1b rows).
    angle: Mapped[float | None] = mapped_column(Float, default=None)
    scale: Mapped[float | None] = mapped_column(Float, default=None)
    brightness: Mapped[float | None] = mapped_column(Float, default=None)
    n: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)
    agreed: Mapped[int] = mapped_column(Integer)


class ClassResult(Base):
    __tablename__ = "class_results"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    clean_accuracy: Mapped[float] = mapped_column(Float)
    mean_accuracy: Mapped[float] = mapped_column(Float)
    worst_case_accuracy: Mapped[float] = mapped_column(Float)


class ExampleResult(Base):
    __tablename__ = "example_results"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer)
    clean_prediction: Mapped[int] = mapped_column(Integer)
    worst_prediction: Mapped[int] = mapped_column(Integer)
    worst_dx: Mapped[float] = mapped_column(Float)
    worst_dy: Mapped[float] = mapped_column(Float)
    # The true label's probability at the worst shift; null for evaluations recorded before it was kept.
    worst_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The rest of the worst transform: null for translation sweeps (and those recorded before it was kept).
    worst_angle: Mapped[float | None] = mapped_column(Float, nullable=True)
    worst_scale: Mapped[float | None] = mapped_column(Float, nullable=True)
    worst_brightness: Mapped[float | None] = mapped_column(Float, nullable=True)
    flips: Mapped[int] = mapped_column(Integer)


class LayerResult(Base):
    """One layer of a layer profile under one grid shift (SPEC §3)."""

    __tablename__ = "layer_results"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    layer_position: Mapped[int] = mapped_column(Integer, primary_key=True)
    shift_position: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(100))
    shape: Mapped[list[Any]] = mapped_column()
    factor: Mapped[int | None] = mapped_column(Integer)
    dx: Mapped[float] = mapped_column(Float)
    dy: Mapped[float] = mapped_column(Float)
    equivariance_error: Mapped[float | None] = mapped_column(Float)
    invariance_error: Mapped[float | None] = mapped_column(Float)


class SegmentationResult(Base):
    """A segmentation sweep under one grid shift: pixel counts and SPEC §3's errors."""

    __tablename__ = "segmentation_results"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    dx: Mapped[float] = mapped_column(Float)
    dy: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    pixels: Mapped[int] = mapped_column(BigInteger)
    correct: Mapped[int] = mapped_column(BigInteger)
    cells: Mapped[int] = mapped_column(BigInteger)
    agreed: Mapped[int] = mapped_column(BigInteger)
    equivariance_error: Mapped[float | None] = mapped_column(Float)
    miou: Mapped[float | None] = mapped_column(Float)


class EvaluationTag(Base):
    """One tag of an evaluation: `?tag=` is an indexed lookup, not a scan of every request's JSON."""

    __tablename__ = "evaluation_tags"
    __table_args__ = (Index("ix_evaluation_tags_tag", "tag", "evaluation_id"),)

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
