"""The request codec, without sockets: a valid request round-trips, every malformed one is
refused naming the field, and the decoder raises nothing but RequestError.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndsharray import protocol
from ndsharray.protocol import ErrorCode, RequestError, decode_request, encode_request

TOKEN = "0123456789abcdef"


def test_roundtrip_of_a_valid_request() -> None:
    req = decode_request(encode_request(7, "generation", tag="cam/left", pid=12, token=TOKEN,
                                        dtype="'<f8'", shape=[2, 3], slots=3))
    assert (req.id, req.op, req.args["shape"]) == (7, "generation", (2, 3))


@pytest.mark.parametrize("msg, code, words", [
    (b"\xff\xfe", ErrorCode.BAD_REQUEST, "not JSON"),
    (b"[1, 2]", ErrorCode.BAD_REQUEST, "JSON object"),
    (b'{"v": 1, "op": "ping"}', ErrorCode.BAD_REQUEST, "'id'"),
    (b'{"v": 9, "id": 1, "op": "ping"}', ErrorCode.BAD_VERSION, "version 9"),
    (b'{"v": 1, "id": 1, "op": "rm -rf"}', ErrorCode.UNKNOWN_OP, "unknown op"),
    (b'{"v": 1, "id": 1, "op": "claim", "tag": "t", "pid": 1}', ErrorCode.BAD_REQUEST, "'token' missing"),
    (b'{"v": 1, "id": 1, "op": "claim", "tag": "../x", "pid": 1, "token": "' + TOKEN.encode() + b'"}',
     ErrorCode.BAD_REQUEST, "field 'tag'"),
    (b'{"v": 1, "id": 1, "op": "claim", "tag": "t", "pid": -4, "token": "' + TOKEN.encode() + b'"}',
     ErrorCode.BAD_REQUEST, "field 'pid'"),
    (json.dumps({"v": 1, "id": 1, "op": "generation", "tag": "t", "pid": 1, "token": TOKEN,
                 "dtype": "'<f8'", "shape": [1] * 65, "slots": 3}).encode(), ErrorCode.BAD_REQUEST, "'shape'"),
    (json.dumps({"v": 1, "id": 1, "op": "generation", "tag": "t", "pid": 1, "token": TOKEN,
                 "dtype": "'<f8'", "shape": [-1], "slots": 3}).encode(), ErrorCode.BAD_REQUEST, "non-negative"),
    (b"{" + b" " * protocol.MAX_MESSAGE_BYTES + b"}", ErrorCode.BAD_REQUEST, "limit"),
])
def test_bad_requests_name_the_problem(msg: bytes, code: ErrorCode, words: str) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(msg)
    assert info.value.code == code and words in info.value.message


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["v", "id", "op", "tag", "pid", "token", "shape"]),
                                 st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                           st.lists(st.integers(), max_size=5)))
                 .map(lambda d: json.dumps(d).encode())))
def test_decoder_only_ever_raises_request_error(data: bytes) -> None:
    try:
        decode_request(data)
    except RequestError:
        pass
