#!/usr/bin/env python3
"""Classify image files with a running `scoring serve` (standard library only).

    python examples/image-classification/classify.py cat.jpg dog.png --url http://127.0.0.1:8080 --top-k 3

One file is sent as raw bytes (Content-Type from its extension); several go in one JSON request
(`{"images": [<base64>, ...]}`), which the server scores as one batch.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def post(url: str, body: bytes, content_type: str, api_key: str | None) -> dict[str, object]:
    headers = {"Content-Type": content_type}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if not url.startswith(("http://", "https://")):
        sys.exit(f"error: --url must start with http:// or https://, got {url!r}")
    req = urllib.request.Request(url.rstrip("/") + "/score", data=body, headers=headers,  # noqa: S310 - checked
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - http(s) only, checked above
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        sys.exit(f"error: HTTP {e.code}: {detail}")
    except urllib.error.URLError as e:
        sys.exit(f"error: cannot reach {url}: {e.reason} (is `scoring serve` running?)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="JPEG, PNG or WEBP files")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server URL (default http://127.0.0.1:8080)")
    p.add_argument("--top-k", type=int, default=None, help="classes per image (default: the model's)")
    p.add_argument("--api-key", default=None, help="API key, if the server requires one")
    args = p.parse_args(argv)
    for f in args.images:
        if not f.is_file():
            p.error(f"{f}: no such file")
        if f.suffix.lower() not in TYPES:
            p.error(f"{f}: use a .jpg, .jpeg, .png or .webp file")
    if len(args.images) == 1 and args.top_k is None:
        f = args.images[0]
        result = post(args.url, f.read_bytes(), TYPES[f.suffix.lower()], args.api_key)
    else:
        doc: dict[str, object] = {"images": [base64.b64encode(f.read_bytes()).decode() for f in args.images]}
        if args.top_k is not None:
            doc["top_k"] = args.top_k
        result = post(args.url, json.dumps(doc).encode(), "application/json", args.api_key)
    predictions = result["predictions"]
    assert isinstance(predictions, list)
    for f, top in zip(args.images, predictions, strict=True):
        print(f.name)
        for entry in top:
            print(f"  {entry['probability']:7.2%}  {entry['label']} ({entry['index']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
