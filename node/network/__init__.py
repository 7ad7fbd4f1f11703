"""The node's gRPC edge: peer transport (peers.py) and the client API (api.py); the only code importing grpc."""
