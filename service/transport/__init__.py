"""gRPC: the server, protobuf conversion, the error-to-status map, interceptors (API keys,
metrics), TLS and the Python client. The only package that imports ``grpc``."""
