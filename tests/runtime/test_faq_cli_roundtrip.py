"""The whole path in real processes: train.py registers -> `scoring fetch` -> `scoring serve` -> HTTP."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.support import FAQ_EXAMPLE, SCORING, clean_process_env, free_port, scoring_serve

pytestmark = pytest.mark.slow
QUESTION = "I can't remember my console password, how do I reset it?"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)


@contextmanager
def served(model_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        with scoring_serve(model_dir, *extra, log=Path(tmp) / "serve.log", env=env) as server:
            yield server.url
        out = server.output
    assert "Bearer" not in out and "key-" not in out  # keys and auth headers are never logged


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roundtrip")
    registry = root / "registry"
    env = clean_process_env()
    trained = run(sys.executable, str(FAQ_EXAMPLE / "train.py"), "--registry", str(registry), env=env)
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.strip() == "1"
    assert "baseline: char TF-IDF vs profile" in trained.stderr and "no-match threshold" in trained.stderr
    listed = run(*SCORING, "models", "--registry", str(registry), env=env)
    assert "faq-matcher" in listed.stdout and "latest" in listed.stdout
    dest = root / "model"
    got = run(*SCORING, "fetch", "--registry", registry.as_uri(), "--name", "faq-matcher", "--dest", str(dest),
              env=env)
    assert got.returncode == 0, got.stderr
    assert "files verified" in got.stderr
    return dest


def test_serve_answers_a_paraphrase(fetched: Path) -> None:
    with served(fetched) as base:
        r = httpx.post(f"{base}/score", json={"question": QUESTION, "top_k": 3}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["matches"][0]["id"] == 101
        v2 = httpx.post(f"{base}/v2/models/faq-matcher/infer", timeout=10, json={
            "inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": [QUESTION]}]})
        assert v2.json()["outputs"][0]["data"][0] == "101"
        assert httpx.get(f"{base}/", timeout=5).json()["model"] == "faq-matcher"


def test_serve_with_api_key_and_two_workers(fetched: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-old-0123456789abcdef\nkey-new-0123456789abcdef\n", encoding="utf-8")
    env = clean_process_env() | {"SCORING_API_KEY_FILE": str(keys), "SCORING_LOG_FORMAT": "text"}
    with served(fetched, "--workers", "2", env=env) as base:
        assert httpx.post(f"{base}/score", json={"question": QUESTION}, timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer key-wrong-0000000000"}
        assert httpx.post(f"{base}/score", json={"question": QUESTION}, headers=wrong, timeout=10).status_code == 401
        n = 12
        with httpx.Client(base_url=base, timeout=10) as c:
            for i in range(n):
                key = "key-old-0123456789abcdef" if i % 2 else "key-new-0123456789abcdef"
                r = c.post("/score", json={"question": QUESTION}, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200 and r.json()["matches"][0]["id"] == 101
        # whichever worker answers /metrics, counts cover both workers (prometheus multiprocess mode)
        for _ in range(4):
            text = httpx.get(f"{base}/metrics", timeout=10).text
            counts = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
                      for s in f.samples if s.name == "scoring_requests_total"}
            assert counts[(("code", "200"), ("endpoint", "/score"), ("method", "POST"))] == n
            assert counts[(("code", "401"), ("endpoint", "/score"), ("method", "POST"))] == 2


def test_serve_on_a_bad_model_dir_fails_in_one_line(tmp_path: Path) -> None:
    r = run(*SCORING, "serve", "--model-dir", str(tmp_path), "--port", str(free_port()), env=clean_process_env())
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "model.json not found" in r.stderr


def test_serve_exits_non_zero_when_the_model_cannot_load(fetched: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(fetched, broken)
    (broken / "pipeline.skops").write_bytes(b"not a zip file")
    r = run(*SCORING, "serve", "--model-dir", str(broken), "--port", str(free_port()), env=clean_process_env())
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the model failed to load: pipeline.skops is not a readable skops file"), r.stderr
