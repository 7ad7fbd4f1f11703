"""TLS settings for the client API: server authentication with the network CA, optionally a
client certificate (mutual TLS), and a server name override for certificates issued to a node
name rather than to the address dialled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS setting is inconsistent or a file cannot be read; setting names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"tls.{setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Paths of PEM files. client_cert_path and client_key_path go together."""

    ca_cert_path: str | Path
    client_cert_path: str | Path | None = None
    client_key_path: str | Path | None = None
    server_name_override: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; raises TlsConfigError naming the bad setting."""
        if (self.client_cert_path is None) != (self.client_key_path is None):
            raise TlsConfigError(
                "client_cert_path" if self.client_cert_path is None else "client_key_path",
                "client_cert_path and client_key_path must be given together",
            )
        ca = _read("ca_cert_path", self.ca_cert_path)
        cert = _read("client_cert_path", self.client_cert_path) if self.client_cert_path else None
        key = _read("client_key_path", self.client_key_path) if self.client_key_path else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name_override:
            return [("grpc.ssl_target_name_override", self.server_name_override)]
        return []


def _read(setting: str, path: str | Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(setting, f"{path} does not exist") from None
    except OSError as exc:
        raise TlsConfigError(setting, f"{path} cannot be read ({exc.strerror})") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(setting, f"{path} is not a PEM file")
    return data
