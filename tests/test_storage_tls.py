"""TLS on the external endpoint: real Bazel over grpcs:// with a private CA the test makes, plain
gRPC refused cleanly, and snippets that say grpcs:// and --tls_certificate."""

import datetime
import glob
import ipaddress
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from tests.support.bazel import bazel_in, write_workspace
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona


@dataclass
class Pki:
    ca: Path  # what workstations trust (--tls_certificate)
    chain: Path  # the server's certificate followed by the CA's (REAPI_TLS_CERT)
    key: Path  # the server's key (REAPI_TLS_KEY)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(root: Path) -> Pki:
    """A private CA and a server certificate for 127.0.0.1 and localhost, valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Test private CA"))
        .issuer_name(_name("Test private CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pki = Pki(root / "ca.pem", root / "server-chain.pem", root / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.chain.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    pki.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(pki.key, 0o600)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[ReapiServer]:
    env = {"REAPI_TLS_CERT": str(pki.chain), "REAPI_TLS_KEY": str(pki.key)}
    with ReapiServer("external", env=env) as server:
        yield server


def test_the_server_speaks_tls_to_a_client_that_trusts_the_ca(
    tls_server: ReapiServer, pki: Pki, acme: Persona
) -> None:
    assert tls_server.url.startswith("grpcs://")
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(tls_server.address, creds) as channel:
        client = Client(channel, acme.pat())
        client.upload(b"over tls")
        assert client.get_capabilities().cache_capabilities.max_batch_total_size_bytes > 0


def test_plain_grpc_to_the_tls_port_fails_cleanly(tls_server: ReapiServer, pki: Pki, acme: Persona) -> None:
    with grpc.insecure_channel(tls_server.address) as channel, pytest.raises(grpc.RpcError) as info:
        # Refused, not hung: a hang would end at this deadline as DEADLINE_EXCEEDED instead.
        re_grpc.CapabilitiesStub(channel).GetCapabilities(
            re_pb2.GetCapabilitiesRequest(), metadata=(("x-aspect", acme.pat()),), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the CA is refused too ...
    untrusting = grpc.ssl_channel_credentials()  # the system's roots only
    with grpc.secure_channel(tls_server.address, untrusting) as channel, pytest.raises(grpc.RpcError) as info:
        Client(channel, acme.pat()).get_capabilities()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... and the server goes on serving the ones that do.
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(tls_server.address, creds) as channel:
        assert Client(channel, acme.pat()).get_capabilities().cache_capabilities.digest_functions


def debian_bazel_tls_startup(tmp: Path) -> tuple[str, ...]:
    """Startup flags that let Debian's bazel-bootstrap speak TLS at all.

    Its bundled Netty has no JDK ALPN support, so TLS needs the OpenSSL provider (netty-tcnative,
    Debian's libnetty-tcnative-jni, which `make test-deps` installs); Netty looks for the library
    as libnetty_tcnative.so, Debian ships it as libnetty-tcnative.so, and Bazel sets the JVM's
    java.library.path to its install base. Upstream Bazel releases bundle the library.
    """
    found = sorted(glob.glob("/usr/lib/*/jni/libnetty-tcnative.so"))
    if not found:
        raise RuntimeError("libnetty-tcnative-jni is not installed: `make test-deps` installs it")
    lib = tmp / "jni"
    lib.mkdir()
    shutil.copy(found[0], lib / "libnetty_tcnative.so")  # a copy: the library checks its own name
    return (f"--host_jvm_args=-Djava.library.path={lib}:/usr/share/bazel/",)


@pytest.mark.bazel
def test_bazel_gets_cache_hits_over_tls_with_a_private_ca(
    tmp_path: Path, tls_server: ReapiServer, pki: Pki, acme: Persona
) -> None:
    flags = (
        f"--remote_cache=grpcs://{tls_server.address}",
        f"--tls_certificate={pki.ca}",
        f"--remote_header=X-Aspect={acme.pat(acme.developer)}",
    )
    with bazel_in(tmp_path, startup=debian_bazel_tls_startup(tmp_path)) as bazel:
        targets = write_workspace(bazel.workspace, [1024, 64 * 1024, 2 * 1024 * 1024], salt=acme.slug)
        first = bazel.build(*flags)
        assert first.returncode == 0, first.output
        bazel.clean()
        second = bazel.build(*flags)
        assert second.returncode == 0, second.output
        assert second.processes.get("remote cache hit") == len(targets), second.output


def test_snippets_print_grpcs_and_the_private_ca(pki: Pki, acme: Persona) -> None:
    tls = {"REAPI_TLS_CERT": str(pki.chain), "REAPI_TLS_KEY": str(pki.key)}
    out = manage("bazelrc", "--tenant", acme.slug, "--cluster", "external", env=tls).stdout
    assert "build --remote_cache=grpcs://127.0.0.1:8980" in out
    assert "tls_certificate" not in out  # a public CA needs no flag
    out = manage(
        "bazelrc", "--tenant", acme.slug, "--tls-certificate", "/etc/ssl/certs/acme-ca.pem", env=tls
    ).stdout
    assert "build --tls_certificate=/etc/ssl/certs/acme-ca.pem" in out
    # TLS ended by a proxy in front: the server speaks plain gRPC, snippets name the proxy.
    proxied = {"REAPI_EXTERNAL_URL": "grpcs://cache.example.com"}
    out = manage("bazelrc", "--tenant", acme.slug, env=proxied).stdout
    assert "build --remote_cache=grpcs://cache.example.com" in out
    plain = manage("bazelrc", "--tenant", acme.slug).stdout
    assert "build --remote_cache=grpc://127.0.0.1:8980" in plain
