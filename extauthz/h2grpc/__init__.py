"""The built-in HTTP/2 gRPC server (``serve --grpc-server native``; docs/grpc-native.md)."""

from extauthz.h2grpc.server import NativeGrpcServer

__all__ = ["NativeGrpcServer"]
