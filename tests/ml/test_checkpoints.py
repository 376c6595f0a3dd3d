"""Checkpoint resolution and download, against an HTTP server started on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ml.checkpoints import (
    CHECKPOINT_ENV_VAR,
    OFFICIAL_CHECKPOINTS,
    file_sha256,
    resolve_checkpoint,
)
from ml.errors import CheckpointError, SettingsError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: two download chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
VIT_B_FILENAME = "sam_vit_b_01ec64.pth"


@dataclass
class FileServer:
    """Threaded HTTP server on 127.0.0.1 with request counts per path."""

    base_url: str
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"


@pytest.fixture()
def file_server() -> Iterator[FileServer]:
    state = FileServer(base_url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
            state.requests.append(self.path)
            if self.path == f"/{VIT_B_FILENAME}":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            elif self.path == "/truncated.pth":
                # Promise the whole payload, send 100 kB, then close the connection.
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:100_000])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            elif self.path == "/stalls.pth":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:1000])
                self.wfile.flush()
                time.sleep(2.0)
            else:
                self.send_error(404, "Not Found")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_checkpoint_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHECKPOINT_ENV_VAR, raising=False)


def closed_port() -> int:
    """Return a port on 127.0.0.1 that was just free and now has no listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_official_table_matches_release() -> None:
    vit_b = OFFICIAL_CHECKPOINTS["vit_b"]
    assert vit_b.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert vit_b.filename == VIT_B_FILENAME
    assert vit_b.size_bytes == 375042383
    assert OFFICIAL_CHECKPOINTS["vit_l"].filename == "sam_vit_l_0b3195.pth"
    assert OFFICIAL_CHECKPOINTS["vit_h"].filename == "sam_vit_h_4b8939.pth"
    assert all(len(entry.sha256) == 64 for entry in OFFICIAL_CHECKPOINTS.values())


def test_download_verifies_and_caches(file_server: FileServer, tmp_path: Path) -> None:
    progress_calls: list[tuple[int, int | None]] = []

    path = resolve_checkpoint(
        "vit_b",
        cache_dir=tmp_path,
        url=file_server.url(VIT_B_FILENAME),
        sha256=PAYLOAD_SHA256,
        progress=lambda done, total: progress_calls.append((done, total)),
    )

    assert path == tmp_path.resolve() / VIT_B_FILENAME
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == [VIT_B_FILENAME]
    assert progress_calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(progress_calls) == 2
    assert file_server.requests == [f"/{VIT_B_FILENAME}"]


def test_second_call_uses_cache(file_server: FileServer, tmp_path: Path) -> None:
    for _ in range(2):
        path = resolve_checkpoint(
            "vit_b", cache_dir=tmp_path, url=file_server.url(VIT_B_FILENAME), sha256=PAYLOAD_SHA256
        )

    assert file_sha256(path) == PAYLOAD_SHA256
    assert file_server.requests == [f"/{VIT_B_FILENAME}"]


def test_corrupt_cache_file_downloaded_again(file_server: FileServer, tmp_path: Path) -> None:
    (tmp_path / VIT_B_FILENAME).write_bytes(b"not the checkpoint")

    path = resolve_checkpoint(
        "vit_b", cache_dir=tmp_path, url=file_server.url(VIT_B_FILENAME), sha256=PAYLOAD_SHA256
    )

    assert path.read_bytes() == PAYLOAD
    assert len(file_server.requests) == 1


def test_wrong_digest_leaves_cache_empty(file_server: FileServer, tmp_path: Path) -> None:
    wrong_sha256 = "0" * 64

    with pytest.raises(CheckpointError) as excinfo:
        resolve_checkpoint(
            "vit_b", cache_dir=tmp_path, url=file_server.url(VIT_B_FILENAME), sha256=wrong_sha256
        )

    assert PAYLOAD_SHA256 in str(excinfo.value)
    assert wrong_sha256 in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_official_digest_rejects_other_file(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=OFFICIAL_CHECKPOINTS["vit_b"].sha256):
        resolve_checkpoint("vit_b", cache_dir=tmp_path, url=file_server.url(VIT_B_FILENAME))

    assert list(tmp_path.iterdir()) == []


def test_http_404_names_fix(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        resolve_checkpoint("vit_b", cache_dir=tmp_path, url=file_server.url("missing.pth"))

    message = str(excinfo.value)
    assert "HTTP 404" in message
    assert CHECKPOINT_ENV_VAR in message
    assert VIT_B_FILENAME in message
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_says_supply_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{VIT_B_FILENAME}"

    with pytest.raises(CheckpointError) as excinfo:
        resolve_checkpoint("vit_b", cache_dir=tmp_path, url=url, timeout_s=5.0)

    message = str(excinfo.value)
    assert f"set {CHECKPOINT_ENV_VAR}" in message
    assert "--checkpoint PATH" in message
    assert f"place {VIT_B_FILENAME} in the cache folder {tmp_path.resolve()}" in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_leaves_no_part(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="interrupted after 100000 of 1048580 bytes"):
        resolve_checkpoint(
            "vit_b", cache_dir=tmp_path, url=file_server.url("truncated.pth"),
            sha256=PAYLOAD_SHA256,
        )

    assert list(tmp_path.iterdir()) == []


def test_read_timeout_leaves_no_part(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="interrupted after [0-9]+ bytes: timed out"):
        resolve_checkpoint(
            "vit_b", cache_dir=tmp_path, url=file_server.url("stalls.pth"),
            sha256=PAYLOAD_SHA256, timeout_s=0.5,
        )

    assert list(tmp_path.iterdir()) == []


def test_explicit_path_wins(file_server: FileServer, tmp_path: Path) -> None:
    local = tmp_path / "my_sam.pth"
    local.write_bytes(b"weights")

    path = resolve_checkpoint("vit_b", local, cache_dir=tmp_path / "cache",
                              url=file_server.url(VIT_B_FILENAME))

    assert path == local.resolve()
    assert file_server.requests == []


def test_env_var_path_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = tmp_path / "from_env.pth"
    local.write_bytes(b"weights")
    monkeypatch.setenv(CHECKPOINT_ENV_VAR, str(local))

    assert resolve_checkpoint("vit_l", cache_dir=tmp_path / "cache") == local.resolve()


def test_missing_explicit_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"

    with pytest.raises(CheckpointError, match="nope.pth.*was not found"):
        resolve_checkpoint("vit_b", missing, cache_dir=tmp_path)


def test_unknown_type_and_scheme_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="vit_x"):
        resolve_checkpoint("vit_x", cache_dir=tmp_path)
    with pytest.raises(SettingsError, match="scheme 'file'"):
        resolve_checkpoint("vit_b", cache_dir=tmp_path, url="file:///etc/hostname")
