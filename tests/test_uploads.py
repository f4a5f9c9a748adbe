"""Request bodies as scripts expect them: multipart/form-data uploads parsed by the server into
request.form and request.files, and compressed bodies inflated (a bomb is a 413)."""

from __future__ import annotations

import base64
import zlib

from tests.support import running

ECHO_FORM = """
  local files = {}
  for field, f in pairs(request.files or {}) do
    files[field] = {type = f.type, filename = f.filename, content = base64.encode(f.content)}
  end
  return json.stringify({form = request.form, files = files})
"""


async def test_a_multipart_upload_fills_form_and_files(tmp_path):
    (tmp_path / "a.test" / "upload").mkdir(parents=True)
    (tmp_path / "a.test" / "upload" / "index.lua").write_text(ECHO_FORM)
    async with running(tmp_path) as srv:
        response = await srv.client.post(
            srv.url + "/upload",
            headers={"Host": "a.test"},
            data={"title": "hello", "tag": ["a", "b"]},
            files={"photo": ("cat.png", b"\x89PNG\x00\xff", "image/png")},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "form": {"title": "hello", "tag": ["a", "b"]},
        "files": {
            "photo": {
                "type": "image/png",
                "filename": "cat.png",
                "content": base64.b64encode(b"\x89PNG\x00\xff").decode(),
            }
        },
    }


async def test_a_malformed_multipart_body_is_a_400_naming_the_problem(tmp_path):
    (tmp_path / "a.test" / "upload").mkdir(parents=True)
    (tmp_path / "a.test" / "upload" / "index.lua").write_text(ECHO_FORM)
    async with running(tmp_path) as srv:
        cut = await srv.client.post(
            srv.url + "/upload",
            headers={"Host": "a.test", "Content-Type": "multipart/form-data; boundary=XX"},
            content=b'--XX\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello',
        )
        no_boundary = await srv.client.post(
            srv.url + "/upload",
            headers={"Host": "a.test", "Content-Type": "multipart/form-data"},
            content=b"whatever",
        )
    assert cut.status_code == 400
    assert cut.text == "malformed multipart/form-data body: it ends before its last boundary\n"
    assert no_boundary.status_code == 400
    assert no_boundary.text == "multipart/form-data without a boundary\n"


async def test_a_compressed_request_body_is_inflated_and_a_bomb_is_a_413(tmp_path):
    (tmp_path / "a.test" / "inflated").mkdir(parents=True)
    (tmp_path / "a.test" / "inflated" / "index.lua").write_text(
        "return tostring(#request.body) .. ':' .. request.body:sub(1, 5)"
    )
    gzip = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    packed = gzip.compress(b"hello " * 1000) + gzip.flush()
    bomb_packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    bomb = bomb_packer.compress(bytes(64 << 20)) + bomb_packer.flush()  # 64 MiB inflated
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = raw.compress(b"raw deflate") + raw.flush()
    async with running(tmp_path) as srv:

        async def post(body: bytes, coding: str):
            return await srv.client.post(
                srv.url + "/inflated",
                headers={"Host": "a.test", "Content-Encoding": coding},
                content=body,
            )

        inflated = await post(packed, "gzip")
        raw_deflate = await post(deflated, "deflate")
        too_big = await post(bomb, "gzip")
        broken = await post(b"not gzip", "gzip")
    assert (inflated.status_code, inflated.text) == (200, "6000:hello")
    assert (raw_deflate.status_code, raw_deflate.text) == (200, "11:raw d")
    assert too_big.status_code == 413
    assert too_big.text == f"request body larger than {10 * 1024 * 1024} bytes once inflated\n"
    assert broken.status_code == 400
    assert broken.text.startswith("the request body is not valid for its Content-Encoding")
