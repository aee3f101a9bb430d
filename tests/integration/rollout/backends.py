"""Canary versions for the rollout tests (importable by replica workers)."""

from __future__ import annotations

import random
import time


class Version:
    def __init__(self, name: str, error_rate: float = 0.0, delay_s: float = 0.0, answer: str | None = None):
        self.name, self.error_rate, self.delay_s = name, error_rate, delay_s
        self.answer = answer
        self.rng = random.Random(0)

    def __call__(self, x):
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.rng.random() < self.error_rate:
            raise RuntimeError(f"{self.name} failed on {x}")
        return {"version": self.name, "answer": self.answer if self.answer is not None else x * 2}
