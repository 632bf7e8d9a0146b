"""The API spools an upload to SHIFTSCORE_STORAGE_DIR/uploads (not /tmp), hashed as it arrives, and removes it."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from flask import Flask, jsonify

from api.http.settings import attach_settings
from api.http.uploads import StreamingRequest, uploaded_file
from core.settings import Settings


def test_an_upload_spools_to_the_storage_disk_hashed_and_is_removed(tmp_path: Path) -> None:
    settings = Settings.from_env({"SHIFTSCORE_HOME": str(tmp_path / "home"),
                                  "SHIFTSCORE_STORAGE_DIR": str(tmp_path / "storage")})
    app = Flask(__name__)
    app.request_class = StreamingRequest
    attach_settings(app, settings)
    seen = {}

    @app.post("/up")
    def up():
        with uploaded_file() as upload:
            seen["path"] = upload.path
            seen["on_disk"] = upload.path.read_bytes()
            return jsonify(sha256=upload.sha256, size=upload.size)

    content = os.urandom(3 << 20)
    answer = app.test_client().post("/up", data={"file": (io.BytesIO(content), "d.npz")},
                                    content_type="multipart/form-data").get_json()
    assert answer == {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    assert seen["path"].parent == settings.uploads_dir == tmp_path / "storage" / "uploads"
    assert seen["on_disk"] == content
    assert not seen["path"].exists() and list(settings.uploads_dir.iterdir()) == []
