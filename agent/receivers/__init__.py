"""OTLP receivers: HTTP (aiohttp) and gRPC (grpc.aio), sharing decoding, validation and error bodies."""
