"""The wire protocol (pure module): codes in sync with ffavatar.errors, purity, decode limits, validation."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import pytest

from ffavatar.errors import ALL_ERRORS
from ffavatar_backend import protocol as P


def test_error_codes_match_ffavatar_errors():
    assert P.ERROR_CODES == {c.code for c in ALL_ERRORS}
    assert P.E_TIMEOUT not in P.ERROR_CODES and P.E_DISCONNECTED not in P.ERROR_CODES


def test_protocol_client_and_launcher_are_pure():
    code = ("import sys, json; import ffavatar_backend.protocol, ffavatar_backend.client, ffavatar_backend.launcher; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'ffavatar', 'cv2', 'safetensors'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_roundtrip_keeps_str_and_bytes_apart():
    msg = P.make_request("reconstruct", "r1", images=[b"\x89PNG..", b"\xff\xd8"], name="Ada", personalize_steps=3)
    back = P.decode(P.encode(msg))
    assert back == msg and isinstance(back["images"][0], bytes) and isinstance(back["name"], str)
    assert P.validate(back)[0:2] == ("reconstruct", "r1")


@pytest.mark.parametrize("data, code", [
    (b"", P.E_PROTOCOL),
    (b"\xc1", P.E_PROTOCOL),                                    # never-used msgpack byte
    (msgpack.packb([1, 2]), P.E_PROTOCOL),                      # not a map
    (b"\xc6\xff\xff\xff\xff", P.E_PROTOCOL),                    # bin32 declaring 4 GiB, 0 bytes given
    (b"\xdf\xff\xff\xff\xff", P.E_PROTOCOL),                    # map32 declaring 4 G entries
    (b"\x81\x01\x02", P.E_PROTOCOL),                            # int key
    (msgpack.packb({"a": msgpack.ExtType(3, b"x")}), P.E_PROTOCOL),
    (msgpack.packb({"a": msgpack.Timestamp(5)}), P.E_PROTOCOL),
    (b"\x81\xa1a" + b"\x91" * 5000 + b"\x00", P.E_PROTOCOL),    # deep nesting
    (msgpack.packb({"a": [[[[[[[[[[1]]]]]]]]]]}), P.E_PROTOCOL),
])
def test_decode_rejects_malformed(data, code):
    with pytest.raises(P.WireError) as e:
        P.decode(data)
    assert e.value.code == code


def test_decode_enforces_size_limit_before_parsing():
    data = P.encode({"v": 1, "id": "x", "op": "ping", "pad": b"\0" * 1000})
    assert P.decode(data, max_bytes=len(data))["op"] == "ping"
    with pytest.raises(P.WireError) as e:
        P.decode(data, max_bytes=len(data) - 1)
    assert e.value.code == P.E_LIMIT


def _req(op, **fields):
    return {"v": 1, "id": "q", "op": op, **fields}


@pytest.mark.parametrize("msg, code, words", [
    ({"v": 2, "id": "q", "op": "ping"}, P.E_PROTOCOL, "version"),
    ({"v": 1, "op": "ping"}, P.E_PROTOCOL, "'id'"),
    ({"v": 1, "id": "x" * 65, "op": "ping"}, P.E_PROTOCOL, "'id'"),
    (_req("explode"), P.E_PROTOCOL, "unknown op"),
    (_req(5), P.E_PROTOCOL, "'op'"),
    (_req("ping", extra=1), P.E_INVALID_INPUT, "unknown field"),
    (_req("reconstruct"), P.E_INVALID_INPUT, "needs the field 'images'"),
    (_req("reconstruct", images="abc"), P.E_INVALID_INPUT, "list of binary"),
    (_req("reconstruct", images=["abc"]), P.E_INVALID_INPUT, "images'[0]"),
    (_req("reconstruct", images=[]), P.E_INVALID_INPUT, "at least one"),
    (_req("reconstruct", images=[b"x"] * 33), P.E_LIMIT, "limit is 32"),
    (_req("reconstruct", images=[b"x"], personalize_steps=True), P.E_INVALID_INPUT, "integer"),
    (_req("reconstruct", images=[b"x"], personalize_steps=-1), P.E_INVALID_INPUT, "must be in"),
    (_req("reconstruct", images=[b"x"], crop="sideways"), P.E_INVALID_INPUT, "crop"),
    (_req("delete_avatar", avatar="../../etc/passwd"), P.E_INVALID_INPUT, "valid id"),
    (_req("delete_avatar", avatar="0123456789ABCDEF"), P.E_INVALID_INPUT, "valid id"),
    (_req("animate", avatar="0123456789abcdef"), P.E_INVALID_INPUT, "exactly one driver"),
    (_req("animate", avatar="0123456789abcdef", video=b"v", frames=[b"f"]), P.E_INVALID_INPUT, "exactly one"),
    (_req("animate", avatar="0123456789abcdef", video=b"v", format="gif"), P.E_INVALID_INPUT, "one of"),
    (_req("animate", avatar="0123456789abcdef", video=b"v", alpha=True), P.E_INVALID_INPUT, "alpha"),
    (_req("animate", avatar="0123456789abcdef", video=b"v", fps=float("nan")), P.E_INVALID_INPUT, "finite"),
    (_req("animate", avatar="0123456789abcdef", video=b"v", cameras=[1]), P.E_INVALID_INPUT, "maps"),
    (_req("animate_chunk", job="j", frames=[b"a"], last="yes"), P.E_INVALID_INPUT, "boolean"),
])
def test_validate_rejects_with_code_and_reason(msg, code, words):
    with pytest.raises(P.WireError) as e:
        P.validate(msg)
    assert e.value.code == code
    assert words in e.value.message


def test_validate_fills_defaults_and_maps_crop_booleans():
    op, rid, f = P.validate(_req("animate", avatar="0123456789abcdef", stream=True, crop=False))
    assert (op, rid) == ("animate", "q")
    assert f["size"] == 512 and f["format"] == "jpeg" and f["crop"] == "none" and f["frames"] is None
    _, _, f = P.validate(_req("reconstruct", images=[b"x"]))
    assert f == {"images": [b"x"], "personalize_steps": 0, "name": "", "crop": "detect"}
    # per-server limits apply
    with pytest.raises(P.WireError):
        P.validate(_req("reconstruct", images=[b"x"] * 3), P.Limits(max_images=2))


def test_negotiate_picks_common_version():
    assert P.negotiate(None) == 1 and P.negotiate([1, 7]) == 1
    with pytest.raises(P.WireError) as e:
        P.negotiate([2, 3])
    assert e.value.code == P.E_PROTOCOL
