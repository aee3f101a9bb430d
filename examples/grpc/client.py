"""Call the gRPC example (``make run-grpc``) with grpcio: no grpcurl needed.

    .venv/bin/python examples/grpc/client.py [HOST:PORT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: examples.grpc

from examples.grpc import predictor_pb2, predictor_pb2_grpc  # noqa: E402


def main(address: str = "127.0.0.1:9000") -> list[str]:
    lines = []
    with grpc.insecure_channel(address) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        request = predictor_pb2.PredictRequest(text="what a great movie")
        reply = stub.Predict(request, timeout=10)            # routed: the endpoint defining Predict
        lines.append(f"{reply.label} {reply.score:.2f} from {reply.version}")
        metadata = [("endpoint", "predictor"), ("session-id", "user-7")]   # both optional
        for chunk in stub.PredictWords(request, metadata=metadata, timeout=10):
            lines.append(f"{chunk.word}: {chunk.label}")         # each word as it is scored
        try:
            stub.Predict(request, metadata=[("endpoint", "nope")], timeout=10)
        except grpc.RpcError as error:
            lines.append(f"{error.code().name}: {error.details()}")
    return lines


if __name__ == "__main__":
    print("\n".join(main(*sys.argv[1:])))
