"""The gRPC example's backend: ``Predict`` answers once, ``PredictWords`` (a generator) answers
once per word, as a server-streaming RPC, one message as each is ready.

The methods are named after the RPC methods of ``predictor.proto``; each gets the request
message and returns (or yields) the response message. The message module is imported in the
methods, in the replica: the replica finds ``examples.grpc`` from the job's working directory
(the repository root), the driver that reads this file need not.
"""

from __future__ import annotations

import asyncio
import os

POSITIVE = {"good", "great", "love", "excellent", "wonderful", "best", "fun", "happy"}
NEGATIVE = {"bad", "awful", "hate", "terrible", "worst", "boring", "sad", "poor"}


def word_score(word: str) -> float:
    word = word.lower().strip(",.!?")
    return 1.0 if word in POSITIVE else -1.0 if word in NEGATIVE else 0.0


def label_of(score: float) -> str:
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


class Predictor:
    def __init__(self, version: str) -> None:
        self.version = version

    def Predict(self, request):  # a predictor_pb2.PredictRequest
        from examples.grpc import predictor_pb2

        words = request.text.split()
        score = sum(word_score(w) for w in words) / max(1, len(words))
        return predictor_pb2.PredictReply(label=label_of(score), score=score, version=self.version,
                                          word=str(os.getpid()))

    async def PredictWords(self, request):
        from examples.grpc import predictor_pb2

        for word in request.text.split():
            await asyncio.sleep(0.05)  # stands in for per-token work: the client sees each as it comes
            score = word_score(word)
            yield predictor_pb2.PredictReply(label=label_of(score), score=score, version=self.version,
                                             word=word)
