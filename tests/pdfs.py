"""Real PDFs made in the tests: N pages of text, optionally a heavy embedded stream (as a scanned image
would be), written either the classic way (page dictionaries in the file, an `xref` table) or as PDF 1.5
writers do (page dictionaries inside a FlateDecode object stream, a cross-reference stream)."""

from __future__ import annotations

import random
import zlib


def make_pdf(pages: int, padding: int = 0, object_stream: bool = False) -> bytes:
    """A PDF whose page tree holds `pages` pages, each drawing its number, plus `padding` bytes of
    incompressible data in an image XObject the first page uses."""
    first_page, content_of = 3, lambda i: 3 + pages + i
    image = 3 + 2 * pages
    kids = " ".join(f"{first_page + i} 0 R" for i in range(pages))
    dicts = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
             2: f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()}
    for i in range(pages):
        xobject = f" /Resources << /XObject << /Im1 {image} 0 R >> >>" if padding and i == 0 else ""
        dicts[first_page + i] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]{xobject} "
                                 f"/Contents {content_of(i)} 0 R >>").encode()
    streams = {content_of(i): (b"", f"BT /F1 24 Tf 72 720 Td (Page {i + 1}) Tj ET".encode())
               for i in range(pages)}
    if padding:
        side = max(1, int((padding / 3) ** 0.5))
        streams[image] = (f"/Type /XObject /Subtype /Image /Width {side} /Height {side} /ColorSpace /DeviceRGB "
                          "/BitsPerComponent 8".encode(), random.Random(0).randbytes(side * side * 3))
    return _objstm_file(dicts, streams) if object_stream else _classic_file(dicts, streams)


def _stream(extra: bytes, data: bytes) -> bytes:
    return b"<< " + extra + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def _classic_file(dicts: dict[int, bytes], streams: dict[int, tuple[bytes, bytes]]) -> bytes:
    bodies = {**dicts, **{n: _stream(*s) for n, s in streams.items()}}
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for n in sorted(bodies):
        offsets[n] = len(out)
        out += b"%d 0 obj\n" % n + bodies[n] + b"\nendobj\n"
    xref = len(out)
    size = max(bodies) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, size))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def _objstm_file(dicts: dict[int, bytes], streams: dict[int, tuple[bytes, bytes]]) -> bytes:
    """The dictionaries in one compressed object stream, located by a cross-reference stream."""
    numbers = sorted(dicts)
    header, body = b"", b""
    for n in numbers:
        header += b"%d %d " % (n, len(body))
        body += dicts[n] + b"\n"
    objstm = max(max(dicts), max(streams)) + 1
    packed = zlib.compress(header + body)
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for n, (extra, data) in sorted(streams.items()):
        offsets[n] = len(out)
        out += b"%d 0 obj\n" % n + _stream(extra, data) + b"\nendobj\n"
    offsets[objstm] = len(out)
    out += b"%d 0 obj\n" % objstm + _stream(b"/Type /ObjStm /N %d /First %d /Filter /FlateDecode"
                                            % (len(numbers), len(header)), packed) + b"\nendobj\n"
    xref_number = objstm + 1
    offsets[xref_number] = len(out)
    rows = bytearray(b"\x00\x00\x00\x00\x00\xff\xff")  # object 0: free
    for n in range(1, xref_number + 1):
        if n in dicts:
            rows += b"\x02" + objstm.to_bytes(4, "big") + numbers.index(n).to_bytes(2, "big")
        else:
            rows += b"\x01" + offsets[n].to_bytes(4, "big") + b"\x00\x00"
    xref = zlib.compress(bytes(rows))
    out += b"%d 0 obj\n" % xref_number + _stream(
        b"/Type /XRef /Size %d /W [1 4 2] /Root 1 0 R /Filter /FlateDecode" % (xref_number + 1), xref)
    out += b"\nendobj\nstartxref\n%d\n%%%%EOF\n" % offsets[xref_number]
    return bytes(out)
