"""Open Inference Protocol (V2) tensors: parsing request JSON into numpy, and back.

The server decodes every request tensor here, once, so flavours receive numpy arrays whose
shape and datatype are already checked against the request's `shape` and `datatype` fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scoring_runtime.flavours.errors import BadRequest, describe

#: V2 datatype -> numpy dtype. BYTES tensors hold Python `str` objects (JSON cannot carry raw bytes).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_KIND_OF = {"BOOL": "b", "UINT": "u", "INT": "i", "FP": "f"}
MAX_DIMS = 8
#: largest size of one dimension (numpy refuses far bigger ones even when another dimension is 0)
MAX_DIM_SIZE = 2**31 - 1


def datatype_of(arr: np.ndarray[Any, Any]) -> str:
    """The V2 datatype name for a numpy array (object/str arrays are BYTES)."""
    if arr.dtype.kind in "OUS":
        return "BYTES"
    for name, dt in DTYPES.items():
        if dt == arr.dtype:
            return name
    raise TypeError(f"no V2 datatype for numpy dtype {arr.dtype}")


@dataclass(slots=True)
class V2Tensor:
    """One named tensor; `data` is a numpy array already shaped like `shape`."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray[Any, Any]
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, data: Any, datatype: str | None = None) -> V2Tensor:
        """Build an output tensor from an array-like (lists of str become BYTES)."""
        arr = np.asarray(data, dtype=DTYPES[datatype] if datatype else None)
        if arr.dtype.kind in "US":
            arr = arr.astype(object)
        return cls(name=name, datatype=datatype or datatype_of(arr), shape=list(arr.shape), data=arr)

    def to_json(self) -> dict[str, Any]:
        """The response form: data flattened row-major, as the protocol specifies."""
        flat = self.data.ravel()
        out: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "shape": self.shape,
            # orjson serialises contiguous numeric numpy arrays natively (fast); objects go via list.
            "data": flat.tolist() if flat.dtype.kind in "OfUSb" or flat.dtype == np.float16 else flat,
        }
        if self.parameters:
            out["parameters"] = self.parameters
        return out


@dataclass(slots=True)
class V2Request:
    """A parsed `POST /v2/models/{name}/infer` body."""

    inputs: list[V2Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: names of the outputs the client asked for (None: all of them)
    outputs: list[str] | None = None

    def input(self, name: str) -> V2Tensor:
        """The input called `name`, or a BadRequest naming the inputs that were sent."""
        for t in self.inputs:
            if t.name == name:
                return t
        sent = ", ".join(describe(t.name) for t in self.inputs[:8]) or "none"
        raise BadRequest(f"missing input tensor {describe(name)} (inputs sent: {sent})")


class _Input:
    """"input 'name'" for error messages, built only when a message is (describe() is not free)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"input {describe(self.name)}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: object) -> Any:
    if key not in obj:
        raise BadRequest(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _flatten(data: Any) -> list[Any]:
    """Row-major flatten of nested lists (the protocol allows both flat and nested `data`)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack = [data]
    # iterative depth-first walk keeps deep nesting from hitting the recursion limit
    while stack:
        cur = stack.pop()
        if isinstance(cur, list):
            stack.extend(reversed(cur))
        else:
            out.append(cur)
    return out


def parse_tensor(obj: Any, index: int) -> V2Tensor:
    """Decode one request input; every mismatch is a BadRequest saying what to change."""
    if not isinstance(obj, dict):
        raise BadRequest(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = _require(obj, "name", str, f"inputs[{index}]")
    where = _Input(name)
    datatype = _require(obj, "datatype", str, where)
    shape = _require(obj, "shape", list, where)
    if "data" not in obj:
        raise BadRequest(f"{where}: missing field 'data'")
    if datatype not in DTYPES:
        raise BadRequest(f"{where}: unknown datatype {describe(datatype)}; use one of {', '.join(DTYPES)}")
    if len(shape) > MAX_DIMS or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM_SIZE for d in shape
    ):
        raise BadRequest(
            f"{where}: shape must be a list of at most {MAX_DIMS} non-negative integers "
            f"(each at most {MAX_DIM_SIZE}), got {describe(shape)}"
        )
    flat = _flatten(obj["data"])
    expected = math.prod(shape)
    if len(flat) != expected:
        raise BadRequest(
            f"{where}: shape {shape} needs {expected} elements but data has {len(flat)}; "
            "send data flattened row-major (or nested) with exactly prod(shape) values"
        )
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"{where}: BYTES data must be JSON strings")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        arr = _numeric(flat, datatype, where)
    try:
        data = arr.reshape(shape)
    except ValueError as e:  # e.g. a zero-size shape numpy cannot represent
        raise BadRequest(f"{where}: cannot shape the data as {shape}: {e}") from None
    return V2Tensor(name=name, datatype=datatype, shape=list(shape), data=data, parameters=params)


def _numeric(flat: list[Any], datatype: str, where: object) -> np.ndarray[Any, Any]:
    kind = next(v for k, v in _KIND_OF.items() if datatype.startswith(k))
    for v in flat:
        ok = (
            isinstance(v, bool) if kind == "b"
            else isinstance(v, int | float) and not isinstance(v, bool) and (kind == "f" or float(v).is_integer())
        )
        if not ok:
            raise BadRequest(f"{where}: value {describe(v)} is not a valid {datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            arr = np.asarray(flat, dtype=DTYPES[datatype])
    except (OverflowError, FloatingPointError, ValueError) as e:
        raise BadRequest(f"{where}: values do not fit {datatype}: {e}") from None
    if kind in "ui" and np.any(np.asarray(flat, dtype=object) != arr.astype(object)):
        raise BadRequest(f"{where}: values out of range for {datatype}")
    return arr


def parse_request(body: Any) -> V2Request:
    """Decode a V2 inference request (already JSON-decoded)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with an 'inputs' list")
    inputs = _require(body, "inputs", list, "request")
    if not inputs:
        raise BadRequest("request: 'inputs' is empty; send at least one input tensor")
    req_id = body.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BadRequest("request: 'id' must be a string")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("request: 'parameters' must be an object")
    outputs = body.get("outputs")
    names: list[str] | None = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise BadRequest("request: 'outputs' must be a list of objects with a 'name'")
        names = [o["name"] for o in outputs]
    tensors = [parse_tensor(t, i) for i, t in enumerate(inputs)]
    return V2Request(inputs=tensors, id=req_id, parameters=params, outputs=names)
