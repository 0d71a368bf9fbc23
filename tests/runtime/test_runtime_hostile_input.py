"""Hostile input never gets a 5xx: deeply nested JSON, huge values in error messages, odd text.

Regression for issue 11: a value nested ~1,000 levels deep (orjson accepts up to 1,024) in `top_k`,
`question(s)`, a V2 `shape` or an object inside numeric V2 `data` made building the 400 message
raise RecursionError (a 500 and a traceback in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.applications import Starlette

from scoring_runtime.flavours.errors import DESCRIBE_MAX_CHARS, describe
from scoring_runtime.server.app import create_app
from scoring_runtime.server.http import MAX_ERROR_CHARS, error
from tests.runtime.support import serving, settings

INFER = "/v2/models/faq-matcher/infer"
DEEP = 1000  # the depth of the issue's reproducer
NEST = "[" * DEEP + "]" * DEEP
NEST_OBJ = '{"a":' * DEEP + "1" + "}" * DEEP


def issue_reproducer() -> bytes:
    """Byte for byte what the issue's `python3 -c ... | curl` sends."""
    return ('{"question":"hi","top_k":' + "[" * 1000 + "]" * 1000 + "}").encode()


def v2(tensor: str, params: str = "{}") -> bytes:
    return ('{"parameters": ' + params + ', "inputs": [' + tensor + "]}").encode()


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/score", issue_reproducer(), "top_k must be a positive integer, got [[[[...]]]]"),
        ("/score", b'{"question": "hi", "top_k": ' + NEST_OBJ.encode() + b"}", "top_k must be a positive integer"),
        ("/score", b'{"question": ' + NEST.encode() + b"}", "must be a non-empty string"),
        ("/score", b'{"questions": ["ok", ' + NEST.encode() + b"]}", "must be a non-empty string"),
        ("/score", b'{"input": [' + NEST_OBJ.encode() + b"]}", "must be a non-empty string"),
        (INFER, v2('{"name": "question", "datatype": "BYTES", "shape": ' + NEST + ', "data": ["a"]}'),
         "shape must be a list"),
        (INFER, v2('{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["a"]}',
                   '{"top_k": ' + NEST + "}"), "top_k must be a positive integer"),
        (INFER, v2('{"name": "question", "datatype": "FP32", "shape": [2], "data": [1.5, ' + NEST_OBJ + "]}"),
         "is not a valid FP32"),
        (INFER, v2('{"name": "question", "datatype": "INT64", "shape": [1], "data": [' + NEST_OBJ + "]}"),
         "is not a valid INT64"),
        (INFER, v2('{"name": "question", "datatype": "BYTES", "shape": [1], "data": [' + NEST_OBJ + "]}"),
         "BYTES data must be JSON strings"),
        (INFER, v2('{"name": "question", "datatype": "BYTES", "shape": [1], "data": ' + NEST + "}"),
         "needs 1 elements but data has 0"),
        (INFER, v2('{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["a"]}')[:-1]
         + b', "outputs": [{"name": "x' + b"y" * 100_000 + b'"}]}', "unknown output(s)"),
        (INFER, ('{"inputs": [{"name": "' + "q" * 1_000_000 + '", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}'
                 ).encode(), "missing input tensor 'question'"),
        (INFER, v2('{"name": "question", "datatype": "' + "X" * 1_000_000 + '", "shape": [1], "data": ["a"]}'),
         "unknown datatype"),
    ],
)
async def test_deeply_nested_or_huge_values_are_a_bounded_400(
    faq_app: Callable[..., Starlette], caplog: pytest.LogCaptureFixture, path: str, body: bytes, fragment: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="scoring_runtime"):
        async with serving(faq_app()) as c:
            r = await c.post(path, content=body, headers={"content-type": "application/json"})
            alive = await c.post("/score", json={"question": "reset my password"})
    assert r.status_code == 400, r.text[:500]
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert fragment in message
    assert len(message) <= MAX_ERROR_CHARS
    assert alive.status_code == 200
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_deep_nesting_in_tabular_data_is_a_400(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from tests.runtime.test_runtime_safe_loading import model_dir

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    d = model_dir(tmp_path, LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), "skops")
    async with serving(create_app(settings(d))) as c:
        for body in (b'{"data": ' + NEST.encode() + b"}", b'{"data": [[1, 2, 3, ' + NEST_OBJ.encode() + b"]]}"):
            r = await c.post("/score", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text[:300]
        r = await c.post("/v2/models/tab/infer", content=v2(
            '{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [[1, 2, 3, ' + NEST_OBJ + "]]}"))
        assert r.status_code == 400 and "is not a valid FP64" in r.json()["error"]


async def test_error_bodies_survive_text_json_cannot_carry(faq_app: Callable[..., Starlette]) -> None:
    # a non-ASCII media type is quoted back in the 415
    async with serving(faq_app()) as c:
        r = await c.post("/score", content=b"x", headers={b"content-type": b"text/\xed\xa0\x80"})
    assert r.status_code == 415 and "is not accepted" in r.json()["error"]
    # a lone surrogate (which orjson refuses) or a huge message still renders, bounded
    odd = error(400, "bad \ud800 value " + "x" * 100_000)
    assert odd.status_code == 400
    assert len(orjson.loads(odd.body)["error"]) == MAX_ERROR_CHARS


def test_describe_is_bounded_whatever_the_value() -> None:
    deep = orjson.loads("[" * 1023 + "]" * 1023)
    assert describe(deep) == "[[[[...]]]]"
    assert describe({"a": deep}) == "{'a': [[[...]]]}"
    assert describe(list(range(1000))) == "[0, 1, 2, 3, 4, 5, 6, 7, ... (1000 items)]"
    assert len(describe("x" * 10_000_000)) <= DESCRIBE_MAX_CHARS
    assert describe(10**5000) == "<integer of 16610 bits>"
    wide: Any = [["y" * 1000] * 100] * 100
    assert len(describe(wide)) <= DESCRIBE_MAX_CHARS
