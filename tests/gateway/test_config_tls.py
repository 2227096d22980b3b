"""Backend TLS settings: tls_ca_file is checked when the config loads; tls_verify defaults to on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config

# A self-signed CA certificate (P-256, valid until 2126) used only as a file to load.
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgIUBUea2p3x8SUgmP9ZP3QIZtdBENEwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwScHJvbXB0d2lyZSB0ZXN0IGNhMCAXDTI2MTEyNDIyMDEzMVoY
DzIxMjYxMDMxMjIwMTMxWjAdMRswGQYDVQQDDBJwcm9tcHR3aXJlIHRlc3QgY2Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATKmYWJQTkepg8tMvd3hYWrRSCHIGbz
mdbXOov9ysaO86VZBvvkxb8BCC858Wd8Dq/rsPuAIR6lgBYEXYv/CHWTo1MwUTAd
BgNVHQ4EFgQUwP7Sk/dJtLLCy6nuRyImnNTihGYwHwYDVR0jBBgwFoAUwP7Sk/dJ
tLLCy6nuRyImnNTihGYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiBbxO39j4uAcQhVwLFnNJeCGhw9prFg8YxL7zmMJs2uPAIhAJbcdO1YVSbJn041
iKIbGecXDb9J7fgi6c8TOCzJ8Bm+
-----END CERTIFICATE-----
"""


def _cfg(extra: str) -> str:
    return f"backends: {{a: {{base_url: 'https://up.example/v1'{extra}}}}}"


def test_defaults_verify_with_the_system_store() -> None:
    b = parse_config(_cfg(""), "g.yaml").backends["a"]
    assert b.tls_verify is True and b.tls_ca_file is None


def test_ca_file_and_verify_off_are_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(CA_PEM)
    b = parse_config(_cfg(f", tls_ca_file: '{ca}', tls_verify: false"), "g.yaml").backends["a"]
    assert b.tls_ca_file == str(ca) and b.tls_verify is False


def _missing(d: Path) -> Path:
    return d / "missing.pem"


def _directory(d: Path) -> Path:
    return d


def _not_pem(d: Path) -> Path:
    (d / "x.pem").write_text("not a certificate\n")
    return d / "x.pem"


@pytest.mark.parametrize(
    ("make", "reason"),
    [(_missing, "does not exist"), (_directory, "is not a regular file"), (_not_pem, "holds no usable PEM CA certificate")],
)
def test_bad_ca_file_names_file_key_and_reason(tmp_path: Path, make: Callable[[Path], Path], reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError) as ei:
        parse_config(_cfg(f", tls_ca_file: '{path}'"), "g.yaml")
    assert f"g.yaml: backends.a.tls_ca_file: '{path}' {reason}" in str(ei.value)
