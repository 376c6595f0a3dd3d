"""Official SAM checkpoints: where they come from and how one ends up on local disk.

``resolve_checkpoint`` returns a local file in this order:

1. ``checkpoint_path`` when the caller gives one, else the path in the environment variable
   ``NEPHROWEB_SAM_CHECKPOINT``. The file must exist. It is not checksummed, because a
   given file may be a fine-tuned or mirrored copy.
2. ``<cache_dir>/<official file name>`` when its SHA-256 matches.
3. A download from Meta's public release (or ``url``) into ``cache_dir``. The bytes go to
   a ``.part`` file in the cache folder and are hashed while they stream. The file is
   fsynced and renamed over the final name with ``os.replace``, so the cache never
   contains a partial or unverified file under the final name.

Every failure raises ``CheckpointError`` with a message that explains how to supply a
file by hand, so a machine without network access can still run.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml.errors import CheckpointError, SettingsError

logger = logging.getLogger(__name__)

CHECKPOINT_ENV_VAR = "NEPHROWEB_SAM_CHECKPOINT"
DOWNLOAD_CHUNK_BYTES = 1 << 20
HASH_CHUNK_BYTES = 1 << 22

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``progress(bytes_done, bytes_total)``. ``bytes_total`` is None when unknown."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One checkpoint of Meta's public SAM release (segment-anything 1.0).

    Attributes:
        sam_type: Registry name used by segment-anything ("vit_b", "vit_l", "vit_h").
        url: Public download address.
        sha256: Hex SHA-256 digest of the file.
        size_bytes: File size in bytes, or None where it was not confirmed.
    """

    sam_type: str
    url: str
    sha256: str
    size_bytes: int | None

    @property
    def filename(self) -> str:
        """File name in the cache folder, the last segment of the official URL."""
        return Path(urllib.parse.urlparse(self.url).path).name


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "vit_b": OfficialCheckpoint(
        sam_type="vit_b",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375042383,
    ),
    "vit_l": OfficialCheckpoint(
        sam_type="vit_l",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1249550879,
    ),
    "vit_h": OfficialCheckpoint(
        sam_type="vit_h",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        # NOTE: the vit_h size was not confirmed, so progress uses Content-Length instead.
        size_bytes=None,
    ),
}


def official_checkpoint(sam_type: str) -> OfficialCheckpoint:
    """Look up an official checkpoint by SAM type, raising SettingsError for unknown types."""
    try:
        return OFFICIAL_CHECKPOINTS[sam_type]
    except KeyError:
        allowed = ", ".join(sorted(OFFICIAL_CHECKPOINTS))
        raise SettingsError(
            f"sam_type {sam_type!r} is not an official SAM type. Use one of: {allowed}."
        ) from None


def file_sha256(path: Path) -> str:
    """Hash a file in 4 MiB chunks and return the hex SHA-256 digest.

    Cost: one sequential read of the file, about 1 s per GB on a local SSD (estimate).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(
    sam_type: str,
    checkpoint_path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str],
    url: str | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Return a local SAM checkpoint file, downloading it into the cache when needed.

    Args:
        sam_type: "vit_b", "vit_l" or "vit_h".
        checkpoint_path: Explicit file. It wins over the environment variable and the cache.
        cache_dir: Folder for downloaded checkpoints, created when missing.
        url: Download address, default Meta's public URL for ``sam_type``. Only http(s).
        sha256: Expected hex digest, default the official digest for ``sam_type``.
        progress: Called after every downloaded chunk (1 MiB) with bytes done and total.
        timeout_s: Socket timeout in seconds for connecting and for each read.

    Returns:
        Absolute path of the checkpoint file.

    Raises:
        CheckpointError: The explicit file is missing, or the download fails or does
            not match the digest. The message explains how to supply a file by hand.
        SettingsError: ``sam_type`` or ``url`` is invalid.
    """
    official = official_checkpoint(sam_type)

    explicit = checkpoint_path
    if explicit is None:
        explicit = os.environ.get(CHECKPOINT_ENV_VAR)
    if explicit:
        return _explicit_checkpoint(Path(explicit), from_env=checkpoint_path is None)

    expected_sha256 = (sha256 or official.sha256).lower()
    download_url = url or official.url
    scheme = urllib.parse.urlparse(download_url).scheme
    if scheme not in ("http", "https"):
        raise SettingsError(
            f"Checkpoint URL {download_url!r} has scheme {scheme!r}. Use an http or https URL, "
            "or pass a local file as checkpoint_path."
        )

    cache_folder = Path(cache_dir).expanduser().resolve()
    target = cache_folder / official.filename
    if target.is_file():
        actual_sha256 = file_sha256(target)
        if actual_sha256 == expected_sha256:
            logger.debug("Using cached SAM checkpoint %s", target)
            return target
        logger.warning(
            "Cached SAM checkpoint %s has SHA-256 %s, expected %s. Downloading it again.",
            target, actual_sha256, expected_sha256,
        )
        target.unlink()

    try:
        cache_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot create the checkpoint cache folder {cache_folder}: {exc}. "
            f"{_supply_hint(official, cache_folder)}"
        ) from exc

    bytes_total_hint = official.size_bytes if sha256 is None else None
    _download(
        download_url, target, expected_sha256, official, bytes_total_hint, progress, timeout_s
    )
    return target


def _explicit_checkpoint(path: Path, *, from_env: bool) -> Path:
    path = path.expanduser()
    source = f"the environment variable {CHECKPOINT_ENV_VAR}" if from_env else "checkpoint_path"
    if not path.is_file():
        raise CheckpointError(
            f"SAM checkpoint {path} (from {source}) was not found or is not a file. "
            "Give the path of an existing .pth file, or unset it to use the download cache."
        )
    logger.debug("Using SAM checkpoint %s from %s", path, source)
    return path.resolve()


def _supply_hint(official: OfficialCheckpoint, cache_folder: Path) -> str:
    return (
        "To supply the file by hand, download it elsewhere and either set "
        f"{CHECKPOINT_ENV_VAR} to its local path, pass --checkpoint PATH, or place "
        f"{official.filename} in the cache folder {cache_folder}."
    )


def _download(
    url: str,
    target: Path,
    expected_sha256: str,
    official: OfficialCheckpoint,
    bytes_total_hint: int | None,
    progress: ProgressCallback | None,
    timeout_s: float,
) -> None:
    """Stream ``url`` into ``target`` through a ``.part`` file, verifying the digest."""
    hint = _supply_hint(official, target.parent)
    logger.info("Downloading SAM checkpoint %s from %s to %s", official.sam_type, url, target)

    # A unique .part name lets two workers download at once without writing into one file.
    part_fd, part_name = tempfile.mkstemp(
        prefix=f"{target.name}.", suffix=".part", dir=target.parent
    )
    part_path = Path(part_name)
    finished = False
    try:
        digest = hashlib.sha256()
        bytes_done = 0
        with os.fdopen(part_fd, "wb") as part_file:
            try:
                # The scheme was checked to be http or https above.
                response = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310
            except urllib.error.HTTPError as exc:
                raise CheckpointError(
                    f"Download of SAM checkpoint from {url} failed with HTTP {exc.code} "
                    f"{exc.reason}. {hint}"
                ) from exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise CheckpointError(
                    f"Download of SAM checkpoint from {url} failed: {reason}. "
                    f"The network may be unavailable. {hint}"
                ) from exc

            with response:
                length_header = response.headers.get("Content-Length")
                content_length = int(length_header) if length_header else None
                bytes_total = content_length if content_length is not None else bytes_total_hint
                try:
                    while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                        part_file.write(chunk)
                        digest.update(chunk)
                        bytes_done += len(chunk)
                        if progress is not None:
                            progress(bytes_done, bytes_total)
                except (http.client.HTTPException, TimeoutError, OSError) as exc:
                    raise CheckpointError(
                        f"Download of SAM checkpoint from {url} was interrupted after "
                        f"{bytes_done} bytes: {exc}. {hint}"
                    ) from exc

            # http.client returns a short body without an error when the server closes early.
            if content_length is not None and bytes_done != content_length:
                raise CheckpointError(
                    f"Download of SAM checkpoint from {url} was interrupted after {bytes_done} "
                    f"of {content_length} bytes. {hint}"
                )
            part_file.flush()
            os.fsync(part_file.fileno())

        actual_sha256 = digest.hexdigest()
        if actual_sha256 != expected_sha256:
            raise CheckpointError(
                f"SAM checkpoint downloaded from {url} has SHA-256 {actual_sha256}, expected "
                f"{expected_sha256}. The file was deleted. Check the URL and digest. {hint}"
            )

        os.replace(part_path, target)
        _fsync_folder(target.parent)
        finished = True
        logger.info("Downloaded SAM checkpoint %s (%d bytes) to %s", official.sam_type,
                    bytes_done, target)
    finally:
        if not finished:
            part_path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Persist a rename on POSIX file systems. Does nothing where folders cannot be opened."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_fd)
    except OSError:
        pass
    finally:
        os.close(folder_fd)
