"""Blobs as chunk rows on the embedded SQLite: written from a file and read back as streams, old blobs readable."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.blobs import CHUNK_BYTES, blob_path, put_blob, put_blob_file, read_blob, read_blob_range, reclaim_blobs
from db.datasets import stored_image
from db.migrate import upgrade
from db.models import Blob, BlobChunk
from db.session import make_engine


@pytest.fixture
def session(tmp_path) -> Session:
    url = f"sqlite:///{tmp_path / 'blobs.sqlite3'}"
    upgrade(url)
    with sessionmaker(make_engine(url), expire_on_commit=False)() as session:
        yield session


def test_a_file_is_stored_in_chunks_and_cached_back_byte_for_byte(session, tmp_path) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 5)
    (tmp_path / "upload").write_bytes(data)
    digest = put_blob_file(session, tmp_path / "upload")
    session.commit()
    assert digest == hashlib.sha256(data).hexdigest()
    sizes = session.execute(select(func.length(BlobChunk.data)).where(BlobChunk.sha256 == digest)
                            .order_by(BlobChunk.seq)).scalars().all()
    assert sizes == [CHUNK_BYTES, CHUNK_BYTES, 5]
    assert session.get(Blob, digest).data is None and session.get(Blob, digest).size == len(data)
    assert blob_path(session, digest, tmp_path / "cache").read_bytes() == data
    # The same bytes again add nothing.
    assert put_blob(session, data) == digest
    assert session.execute(select(func.count()).select_from(BlobChunk)).scalar_one() == 3


def test_a_blob_stored_before_the_chunks_stays_readable(session, tmp_path) -> None:
    data = b"stored whole before 0009"
    digest = hashlib.sha256(data).hexdigest()
    session.add(Blob(sha256=digest, size=len(data), data=data))
    session.commit()
    assert b"".join(read_blob(session, digest)) == data
    assert blob_path(session, digest, tmp_path / "cache").read_bytes() == data


def test_reclaiming_a_blob_removes_its_chunks(session) -> None:
    digest = put_blob(session, b"x" * (CHUNK_BYTES + 1))
    session.commit()
    assert reclaim_blobs(session) == 1
    assert session.execute(select(func.count()).select_from(BlobChunk)).scalar_one() == 0
    assert session.get(Blob, digest) is None


def test_a_range_is_read_from_the_chunks_that_hold_it(session) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 100)
    digest = put_blob(session, data)
    legacy = b"0123456789" * 10
    old = hashlib.sha256(legacy).hexdigest()
    session.add(Blob(sha256=old, size=len(legacy), data=legacy))
    session.commit()
    for start, length in ((0, 10), (CHUNK_BYTES - 3, 7), (CHUNK_BYTES - 1, 2 * CHUNK_BYTES + 2),
                          (3 * CHUNK_BYTES + 90, 50), (5 * CHUNK_BYTES, 4), (17, 0)):
        assert read_blob_range(session, digest, start, length) == data[start:start + length], (start, length)
    assert read_blob_range(session, old, 95, 10) == legacy[95:]


def test_one_stored_image_is_read_without_the_whole_blob(session) -> None:
    images = np.random.default_rng(0).integers(0, 256, (40, 300, 200, 3), dtype=np.uint8)  # 7.2 MB: 2 chunks
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    digest = put_blob(session, buffer.getvalue())
    session.commit()
    for index in (0, 23, 39):  # 23 straddles the first chunk's end
        assert np.array_equal(stored_image(session, digest, index), images[index]), index
    with pytest.raises(ValueError, match="no C-ordered image 40"):
        stored_image(session, digest, 40)
