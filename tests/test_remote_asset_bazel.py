"""Real Bazel 4.2.3 with the remote downloader: a workstation's external dependencies come
from the cache once it has them, with their origin down and Bazel's repository cache empty.

The origin is an HTTP server on 127.0.0.1, which REAPI_ASSET_ALLOWED_URLS names (the
documented way to let the server reach an internal host). The .bazelrc is the one
`manage.py bazelrc --remote-downloader` prints, as the portal's builder does.
"""

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from reapi.models import Asset
from tests.support.asset_origin import Origin
from tests.support.bazel import Bazel, bazel_in
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona

pytestmark = pytest.mark.bazel


def archive(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"dep-1.0/{name}")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_workspace(root: Path, file_url: str, file_sha: str, archive_url: str, archive_sha: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "WORKSPACE").write_text(
        f"""workspace(name = "assets")

load("@bazel_tools//tools/build_defs/repo:http.bzl", "http_archive", "http_file")

http_file(
    name = "blob",
    urls = ["{file_url}"],
    sha256 = "{file_sha}",
    downloaded_file_path = "blob.bin",
)

http_archive(
    name = "dep",
    urls = ["{archive_url}"],
    sha256 = "{archive_sha}",
    strip_prefix = "dep-1.0",
    build_file_content = 'exports_files(["hello.txt"])',
)
"""
    )
    (root / "BUILD").write_text(
        """genrule(
    name = "use",
    srcs = ["@blob//file", "@dep//:hello.txt"],
    outs = ["use.txt"],
    cmd = "sha256sum $(SRCS) | sed 's| .*/| |' > $@",
)
"""
    )


def snippet(persona: Persona, server: ReapiServer, *flags: str) -> str:
    return manage(
        "bazelrc",
        "--tenant",
        persona.slug,
        "--cluster",
        "external",
        "--token",
        persona.pat(persona.developer),
        *flags,
        env={"REAPI_EXTERNAL_URL": server.url},
    ).stdout


def fresh_bazel(tmp: Path, name: str, rc: Path) -> Bazel:
    return Bazel(tmp / name / "ws", tmp / name / "root", (f"--bazelrc={rc}",))


def test_a_workstation_builds_with_the_origin_down_through_the_remote_downloader(
    tmp_path: Path, acme: Persona
) -> None:
    blob = os.urandom(300_000)
    tarball = archive({"hello.txt": f"hello from {acme.slug}\n".encode()})
    with Origin() as origin:
        file_url = origin.put("blob.bin", blob)
        archive_url = origin.put("dep-1.0.tar.gz", tarball)
        env = {"REAPI_ASSET_ALLOWED_URLS": f"{origin.base}/files/"}
        with ReapiServer("external", env=env) as server:
            text = snippet(acme, server, "--remote-downloader")
            assert f"build --experimental_remote_downloader={server.url}\n" in text
            assert f"build --remote_cache={server.url}\n" in text
            with_downloader = tmp_path / "downloader.bazelrc"
            with_downloader.write_text(text)
            without = tmp_path / "plain.bazelrc"
            without.write_text(snippet(acme, server))
            shas = (hashlib.sha256(blob).hexdigest(), hashlib.sha256(tarball).hexdigest())

            with bazel_in(tmp_path / "first", startup=(f"--bazelrc={with_downloader}",)) as first:
                write_workspace(first.workspace, file_url, shas[0], archive_url, shas[1])
                built = first.build(f"--repository_cache={tmp_path / 'repo-cache-1'}")
                assert built.returncode == 0, built.output
                outputs = first.outputs()
            assert origin.hits("/files/blob.bin") == 1
            assert origin.hits("/files/dep-1.0.tar.gz") == 1
            assert set(Asset.objects.filter(tenant=acme.tenant).values_list("uri", flat=True)) == {
                file_url,
                archive_url,
            }

            origin.stop()  # the internet is down

            with bazel_in(tmp_path / "second", startup=(f"--bazelrc={with_downloader}",)) as second:
                write_workspace(second.workspace, file_url, shas[0], archive_url, shas[1])
                again = second.build(f"--repository_cache={tmp_path / 'repo-cache-2'}")
                assert again.returncode == 0, again.output
                assert second.outputs() == outputs

            with bazel_in(tmp_path / "control", startup=(f"--bazelrc={without}",)) as control:
                write_workspace(control.workspace, file_url, shas[0], archive_url, shas[1])
                failed = control.build(f"--repository_cache={tmp_path / 'repo-cache-3'}")
                assert failed.returncode != 0, failed.output
                assert "Error downloading" in failed.output or "download" in failed.output.lower()


def test_bazel_says_when_a_url_is_outside_the_allowed_list(tmp_path: Path, acme: Persona) -> None:
    blob = os.urandom(1000)
    with Origin() as origin:
        url = origin.put("elsewhere.bin", blob)
        env = {"REAPI_ASSET_ALLOWED_URLS": f"{origin.base}/mirror/"}
        with ReapiServer("external", env=env) as server:
            rc = tmp_path / "downloader.bazelrc"
            rc.write_text(snippet(acme, server, "--remote-downloader"))
            with bazel_in(tmp_path, startup=(f"--bazelrc={rc}",)) as bazel:
                sha = hashlib.sha256(blob).hexdigest()
                write_workspace(bazel.workspace, url, sha, url, sha)
                result = bazel.build(f"--repository_cache={tmp_path / 'repo-cache'}")
                assert result.returncode != 0, result.output
                assert "PERMISSION_DENIED" in result.output, result.output
                assert f"{url} is refused: it is outside REAPI_ASSET_ALLOWED_URLS" in result.output
        assert origin.hits("/files/") == 0
