"""The client's streamed multipart body: what werkzeug (the API's parser) reads back, its length, its blocks."""

from __future__ import annotations

import io
import os

import requests
from werkzeug.formparser import parse_form_data

from shiftscore.multipart import BLOCK, MultipartBody


class _CountingFile(io.FileIO):
    """A file that records the largest read asked of it."""

    largest = 0

    def read(self, size: int = -1) -> bytes:
        _CountingFile.largest = max(_CountingFile.largest, size if size >= 0 else 1 << 62)
        return super().read(size)


def _parsed(body: MultipartBody, read_size: int):
    data = b"".join(iter(lambda: body.read(read_size), b""))
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": body.content_type, "CONTENT_LENGTH": str(len(data)),
               "wsgi.input": io.BytesIO(data)}
    _, form, files = parse_form_data(environ)
    return data, form, files


def test_werkzeug_reads_back_the_fields_and_the_file_byte_for_byte(tmp_path) -> None:
    content = os.urandom(3 * BLOCK + 17) + b"\r\n--not-the-boundary\r\n"
    (tmp_path / "data.npz").write_bytes(content)
    fields = {"name": "my \"quoted\" set", "preprocess": '{"resize": 256, "center_crop": 224}'}
    with _CountingFile(tmp_path / "data.npz") as handle:
        body = MultipartBody(fields, "file", 'odd "name".npz', handle)
        declared = len(body)
        data, form, files = _parsed(body, 16384)  # urllib3's block size
    assert len(data) == declared
    assert form.to_dict() == {"name": 'my "quoted" set', "preprocess": fields["preprocess"]}
    assert files["file"].filename == 'odd "name".npz' and files["file"].read() == content
    # The file was read a block at a time, never whole.
    assert _CountingFile.largest == BLOCK


def test_requests_sends_it_with_a_content_length_not_chunked(tmp_path) -> None:
    (tmp_path / "m.pt").write_bytes(b"x" * 1000)
    with (tmp_path / "m.pt").open("rb") as handle:
        body = MultipartBody({"name": "m"}, "file", "m.pt", handle)
        prepared = requests.Request("POST", "http://shiftscore.invalid/v1/models", data=body,
                                    headers={"Content-Type": body.content_type}).prepare()
    assert prepared.headers["Content-Length"] == str(len(body)) and "Transfer-Encoding" not in prepared.headers
    assert prepared.body is body
