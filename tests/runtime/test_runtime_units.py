"""Small units: V2 tensor decoding, the direct dispatcher, settings from env, log formatting."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from scoring_runtime.cli import main
from scoring_runtime.flavours import BadRequest, Job
from scoring_runtime.flavours.v2 import V2Tensor, parse_request, parse_tensor
from scoring_runtime.server.dispatch import DirectDispatcher, make_dispatcher
from scoring_runtime.server.logs import JsonFormatter, TextFormatter, event
from scoring_runtime.settings import RuntimeSettings


def tensor(datatype: str, shape: Any, data: Any) -> dict[str, Any]:  # Any: malformed shapes too
    return {"name": "x", "datatype": datatype, "shape": shape, "data": data}


def test_v2_nested_and_flat_data_decode_to_the_same_array() -> None:
    flat = parse_tensor(tensor("FP32", [2, 3], [1, 2, 3, 4, 5, 6]), 0)
    nested = parse_tensor(tensor("FP32", [2, 3], [[1, 2, 3], [4, 5, 6]]), 0)
    assert flat.data.dtype == np.float32 and flat.data.shape == (2, 3)
    np.testing.assert_array_equal(flat.data, nested.data)
    assert parse_tensor(tensor("BOOL", [2], [True, False]), 0).data.tolist() == [True, False]
    assert parse_tensor(tensor("INT64", [1], [2**40]), 0).data.tolist() == [2**40]
    assert parse_tensor(tensor("FP64", [0], []), 0).data.shape == (0,)


@pytest.mark.parametrize(
    ("t", "fragment"),
    [
        (tensor("INT32", [2], [1, 2.5]), "not a valid INT32"),
        (tensor("INT8", [1], [300]), "INT8"),
        (tensor("UINT8", [1], [-1]), "UINT8"),
        (tensor("BOOL", [1], [1]), "not a valid BOOL"),
        (tensor("FP32", [1], ["1.0"]), "not a valid FP32"),
        (tensor("FP32", [1], [True]), "not a valid FP32"),
        (tensor("FP32", [2, 2], [[1, 2], [3]]), "needs 4 elements"),
        (tensor("FP32", "2", [1, 2]), "wrong type"),
        (tensor("FP32", [True], [1]), "non-negative integers"),
        (tensor("FP32", [0, 10**20], []), r"each at most 2147483647\), got \[0, 100000000000000000000\]"),
        (tensor("BYTES", [0, 2**31 - 1, 2**31 - 1, 2**31 - 1], []), "cannot shape the data"),
        ({"name": 3, "datatype": "FP32", "shape": [1], "data": [1]}, "wrong type"),
    ],
)
def test_v2_bad_tensors(t: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        parse_tensor(t, 0)


def test_v2_request_fields_and_output_json() -> None:
    req = parse_request({"id": "r1", "parameters": {"top_k": 2}, "outputs": [{"name": "a"}],
                         "inputs": [tensor("BYTES", [1], ["hi"])]})
    assert (req.id, req.parameters, req.outputs) == ("r1", {"top_k": 2}, ["a"])
    with pytest.raises(BadRequest, match="'id' must be a string"):
        parse_request({"id": 5, "inputs": [tensor("BYTES", [1], ["hi"])]})
    out = V2Tensor.of("s", np.array([[0.5, 0.25]], dtype=np.float32)).to_json()
    assert out["datatype"] == "FP32" and out["shape"] == [1, 2]
    assert orjson.loads(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY))["data"] == [0.5, 0.25]
    assert V2Tensor.of("t", [["a", "b"]]).to_json() == {"name": "t", "datatype": "BYTES", "shape": [1, 2],
                                                          "data": ["a", "b"]}


class CountingScorer:
    def __init__(self, results_per_call: int = 1) -> None:
        self.results_per_call = results_per_call
        self.calls: list[int] = []

    def predict(self, jobs: list[Job]) -> list[Any]:
        self.calls.append(len(jobs))
        return [j.data * 2 for j in jobs][: self.results_per_call] * self.results_per_call


async def test_direct_dispatcher_runs_one_job_per_call(tmp_path: Path) -> None:
    scorer = CountingScorer()
    d = make_dispatcher(scorer, RuntimeSettings(model_dir=tmp_path), None)  # type: ignore[arg-type]
    assert isinstance(d, DirectDispatcher)
    await d.start()
    assert [await d.submit(Job(rows=1, data=i)) for i in (1, 2)] == [2, 4]
    assert scorer.calls == [1, 1]
    bad = DirectDispatcher(CountingScorer(results_per_call=2), None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="returned 2 results for 1 job"):
        await bad.submit(Job(rows=1, data=1))


def test_settings_come_from_env_and_flags_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORING_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SCORING_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("SCORING_ALLOW_PICKLE", "true")
    monkeypatch.setenv("SCORING_TRUSTED_TYPES", '["a.B"]')
    s = RuntimeSettings()
    assert (s.model_dir, s.max_body_bytes, s.allow_pickle, s.trusted_types) == (tmp_path, 2048, True, ("a.B",))
    assert RuntimeSettings(max_body_bytes=10).max_body_bytes == 10
    with pytest.raises(ValueError, match="max_queue_rows"):
        RuntimeSettings(max_batch_size=64, max_queue_rows=8)


def test_serve_cli_reports_bad_settings_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["serve", "--model-dir", str(tmp_path / "missing")])
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "does not exist" in r.output
    monkeypatch.setenv("SCORING_PORT", "not-a-port")
    r = runner.invoke(main, ["serve", "--model-dir", str(tmp_path)])
    assert r.exit_code == 1 and "port" in r.output
    monkeypatch.delenv("SCORING_PORT")
    r = runner.invoke(main, ["serve", "--model-dir", str(tmp_path)])  # exists but holds no model.json
    assert r.exit_code == 1 and "model.json not found" in r.output and r.output.count("\n") == 1


def test_logs_are_one_line_with_fields() -> None:
    log = logging.getLogger("scoring_runtime.test")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        event(log, logging.INFO, "model_ready", model="faq", note="two words\nand a newline")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    for rec in records:
        for fmt in (JsonFormatter(), TextFormatter()):
            assert "\n" not in fmt.format(rec)
    doc = json.loads(JsonFormatter().format(records[0]))
    assert doc["msg"] == "model_ready" and doc["model"] == "faq" and doc["level"] == "info"
    assert 'note="two words\\nand a newline"' in TextFormatter().format(records[0])
    assert "ValueError: bad" in json.loads(JsonFormatter().format(records[1]))["exc"]


def test_json_responses_carry_the_headers_starlettes_generic_path_makes() -> None:
    from starlette.responses import Response

    from scoring_runtime.server.http import JSON

    fast = JSON({"a": np.arange(3)})
    generic = Response(b'{"a":[0,1,2]}', media_type="application/json")
    assert fast.body == generic.body and fast.raw_headers == generic.raw_headers and fast.status_code == 200
    unavailable = Response(b'{"x":1}', 503, media_type="application/json")
    assert JSON({"x": 1}, status_code=503).raw_headers == unavailable.raw_headers
    # given headers (or 204/304, which carry no length) take Starlette's own path
    with_headers = JSON({"e": 1}, status_code=503, headers={"Retry-After": "1"})
    assert with_headers.raw_headers == [(b"retry-after", b"1"), (b"content-length", b"7"),
                                        (b"content-type", b"application/json")]
    assert JSON(None, status_code=204).raw_headers == [(b"content-type", b"application/json")]
