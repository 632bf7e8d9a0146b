"""A multipart/form-data body that streams its file part: uploads of any size in a few blocks of memory.

`requests` builds `files=` bodies in memory (the whole file, then the joined body), which a
dataset of several GB cannot afford. This body knows its length in advance, so requests sends
it with a Content-Length (the API's upload limit is judged before a byte is sent) and reads it
a block at a time as the socket takes it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from typing import IO

BLOCK = 1 << 20


def _quoted(value: str) -> str:
    # The HTML5 form encoding that browsers, urllib3 and werkzeug agree on.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """`fields` as text parts, then `file` (an open binary file, read from where it stands) as part `name`."""

    def __init__(self, fields: Mapping[str, str], name: str, filename: str, file: IO[bytes]) -> None:
        self.boundary = uuid.uuid4().hex
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(key)}"\r\n\r\n{value}\r\n'.encode()
            for key, value in fields.items()
        ]
        parts.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"; '
                     f'filename="{_quoted(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
        self._head = b"".join(parts)
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._file = file
        self._file_bytes = os.fstat(file.fileno()).st_size - file.tell()
        self._pieces = self._stream()
        self._pending = memoryview(b"")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self._file_bytes + len(self._tail)

    def _stream(self) -> Iterator[bytes]:
        yield self._head
        left = self._file_bytes
        while left > 0:
            block = self._file.read(min(BLOCK, left))
            if not block:
                raise OSError(f"the file being uploaded shrank while it was sent ({left} bytes missing)")
            left -= len(block)
            yield block
        yield self._tail

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(BLOCK), b"")

    def read(self, size: int = -1) -> bytes:
        """At most `size` bytes (at most one piece: the parts' headers, a block of the file, the end); b"" at the end."""
        if not self._pending:
            self._pending = memoryview(next(self._pieces, b""))
        take = len(self._pending) if size < 0 else min(size, len(self._pending))
        piece, self._pending = self._pending[:take], self._pending[take:]
        return bytes(piece)
