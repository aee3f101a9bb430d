"""A small sentiment model in two versions, for the quickstart.

v1 scores by counting positive and negative words; v2 also weighs intensifiers. Both read
``threshold`` from ``user_config``, so it can change without restarting replicas, and
``fail_rate``, which makes a share of requests fail: the quickstart's ``sentiment:v3`` is a
broken candidate, for a rollout that rolls back.
"""

from __future__ import annotations

import os
import random

POSITIVE = {"good", "great", "love", "excellent", "wonderful", "best", "fun", "happy"}
NEGATIVE = {"bad", "awful", "hate", "terrible", "worst", "boring", "sad", "poor"}
INTENSIFIERS = {"very", "really", "so", "extremely"}


class Sentiment:
    def __init__(self, version: str) -> None:
        self.version = version
        self.threshold = 0.0
        self.fail_rate = 0.0

    def reconfigure(self, user_config: dict) -> None:
        self.threshold = float(user_config.get("threshold", 0.0))
        self.fail_rate = float(user_config.get("fail_rate", 0.0))

    def score(self, text: str) -> float:
        words = text.lower().replace(",", " ").replace(".", " ").split()
        score, boost = 0.0, 1.0
        for word in words:
            if self.version == "v2" and word in INTENSIFIERS:
                boost = 2.0
                continue
            if word in POSITIVE:
                score += boost
            elif word in NEGATIVE:
                score -= boost
            boost = 1.0
        return score / max(1, len(words)) ** 0.5

    def __call__(self, request) -> dict:
        if random.random() < self.fail_rate:
            raise RuntimeError(f"sentiment {self.version} failed (fail_rate={self.fail_rate})")
        if request.method == "POST":
            text = request.json().get("text", "")
        else:
            text = request.query_params.get("text", "")
        score = self.score(text)
        label = "positive" if score > self.threshold else "negative" if score < -self.threshold else "neutral"
        return {"version": self.version, "label": label, "score": round(score, 3), "replica_pid": os.getpid()}
