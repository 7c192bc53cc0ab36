"""Download/cache manager for the pretrained roles of :mod:`animate124.models.registry`.

Rules (DESIGN.md "Models and downloads"; ecosystem.md section 3.3):
- The cache is a Hugging Face hub cache under ``<cache_dir>/hub``; ``cache_dir`` is the explicit
  argument, else ``$ANIMATE124_CACHE``, else ``platformdirs.user_cache_dir("animate124")``. Every
  huggingface_hub call gets ``cache_dir=`` explicitly, because the ``HF_*`` variables are read once
  at import time.
- Loading never touches the network: :meth:`ModelStore.resolve` finds the snapshot with
  ``snapshot_download(local_files_only=True)`` and the loaders read components from that folder.
- Only :meth:`ModelStore.download` goes online. It fails fast with :class:`DownloadError` when the
  store is offline or the Hub is unreachable, instead of the libraries' minutes of retries.
- Per-role source: explicit ``overrides`` > ``$ANIMATE124_MODEL_<ROLE>`` > registry default. A source
  is a local folder (used as is) or a repo id, optionally ``repo@revision``. Alternatives (e.g. the
  video role's ``zeroscope``) use the key ``"<role>:<alternative>"`` /
  ``$ANIMATE124_MODEL_<ROLE>_<ALTERNATIVE>``.

This module imports only huggingface_hub (lazily) and the standard library, so the CLI can use it for
``animate124 models list`` without torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from animate124.errors import DownloadError, ModelNotFoundError
from animate124.models.registry import (
    WEIGHT_FILE_NAMES,
    RoleSpec,
    alternative_spec,
    download_command,
    get_role,
    pick_weight_files,
    spec_for,
)

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
CONNECT_TIMEOUT_S = 3.0  # pre-flight TCP connect to the endpoint
ETAG_TIMEOUT_S = 5.0  # metadata requests inside snapshot_download


@dataclass(frozen=True)
class Source:
    """Where a role comes from: a local folder, or a Hub repo (with the spec that describes it)."""

    role: str
    alternative: str | None
    spec: RoleSpec
    local_dir: Path | None = None
    origin: str = "default"  # "override" | "env" | "default"

    @property
    def label(self) -> str:
        return str(self.local_dir) if self.local_dir else f"{self.spec.repo_id}@{self.spec.revision}"


#: The file :func:`animate124.models.tiny.build_tiny_cache` writes last into a cache of tiny random models.
TINY_MARKER = "animate124-tiny-cache.json"


def is_tiny_cache(cache_dir: Path) -> bool:
    """True when ``cache_dir`` holds the tiny factory's random models (``models/tiny.py``), which are
    rebuilt rather than downloaded and never held to the real files' hashes."""
    return (Path(cache_dir) / TINY_MARKER).is_file()


def default_cache_dir() -> Path:
    """``$ANIMATE124_CACHE`` or the platform user cache (``~/.cache/animate124`` on Linux)."""
    env = os.environ.get("ANIMATE124_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("animate124"))


def _env_offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "ANIMATE124_OFFLINE")
    )


def _env_key(role: str, alternative: str | None) -> str:
    key = f"ANIMATE124_MODEL_{role}" + (f"_{alternative}" if alternative else "")
    return re.sub(r"[^A-Za-z0-9_]", "_", key).upper()


def _looks_like_path(value: str) -> bool:
    """A local folder: explicit path syntax, an existing directory, or not shaped like ``org/name``."""
    if value.startswith(("/", "./", "../", "~", ".\\")) or "\\" in value or re.match(r"^[A-Za-z]:", value):
        return True
    return Path(value).is_dir() or value.count("/") >= 2


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


class ModelStore:
    """Resolves, downloads, verifies and describes the pretrained models of every role."""

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        offline: bool | None = None,
        overrides: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.hub_dir = self.cache_dir / "hub"
        self.offline = bool(offline) or _env_offline()
        self.overrides = dict(overrides or {})
        self.token = token if token is not None else os.environ.get("HF_TOKEN") or None

    # ------------------------------------------------------------------ sources

    def source(self, role: str, alternative: str | None = None) -> Source:
        """Pick the role's source: explicit override > environment variable > registry default."""
        spec = alternative_spec(role, alternative) if alternative else get_role(role)
        key = f"{role}:{alternative}" if alternative else role
        value, origin = self.overrides.get(key), "override"
        if not value:
            value, origin = os.environ.get(_env_key(role, alternative)), "env"
        if not value:
            return Source(role, alternative, spec)
        value = value.strip()
        if _looks_like_path(value):
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ModelNotFoundError(
                    f"model folder for role {role!r} does not exist: {path} (from {origin})",
                    hint=f"fix the path, or remove the override to use {spec.repo_id}",
                )
            return Source(role, alternative, spec, local_dir=path.resolve(), origin=origin)
        repo_id, _, revision = value.partition("@")
        return Source(role, alternative, spec_for(role, repo_id, revision or None), origin=origin)

    def _missing_error(self, src: Source, detail: str = "") -> ModelNotFoundError:
        cmd = download_command(src.role, src.alternative)
        what = f"model for role {src.role!r} ({src.spec.repo_id}@{src.spec.revision})"
        msg = f"{what} is not in the cache {self.hub_dir}" + (f": {detail}" if detail else "")
        return ModelNotFoundError(msg, hint=f"run `{cmd}` (needs network; licence: {src.spec.licence})")

    def _snapshot(self, spec: RoleSpec) -> Path | None:
        """The cached snapshot folder of ``spec`` (its id or an alias), without any network access."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        for repo_id in spec.repo_ids:
            revision = spec.revision if repo_id == spec.repo_id else "main"
            if not (self.hub_dir / _repo_folder(repo_id)).is_dir():
                continue
            try:
                path = snapshot_download(
                    repo_id, revision=revision, cache_dir=self.hub_dir, local_files_only=True,
                    allow_patterns=list(spec.allow_patterns) or None, ignore_patterns=list(spec.ignore_patterns) or None,
                )  # fmt: skip
            except (LocalEntryNotFoundError, OSError, ValueError):
                continue
            return Path(path)
        return None

    # ------------------------------------------------------------------ queries

    def resolve(self, role: str, alternative: str | None = None) -> Path:
        """The local folder holding ``role``'s files; raises :class:`ModelNotFoundError` when absent
        or incomplete (the message names the role, the repo and the download command)."""
        src = self.source(role, alternative)
        if src.local_dir is not None:
            missing = missing_components(src.local_dir, src.spec)
            if missing:
                raise ModelNotFoundError(
                    f"local model folder for role {role!r} ({src.local_dir}) lacks: {', '.join(missing)}",
                    hint="point the override at a diffusers/transformers folder with the layout of "
                    f"{src.spec.repo_id}",
                )
            return src.local_dir
        path = self._snapshot(src.spec)
        if path is None:
            raise self._missing_error(src)
        missing = missing_components(path, src.spec)
        if missing:
            raise self._missing_error(src, "incomplete download, missing " + ", ".join(missing))
        return path

    def is_cached(self, role: str, alternative: str | None = None) -> bool:
        """True when :meth:`resolve` would succeed (no network)."""
        try:
            self.resolve(role, alternative)
        except ModelNotFoundError:
            return False
        return True

    def cached_size(self, role: str, alternative: str | None = None) -> int | None:
        """Bytes on disk of the resolved snapshot (symlinks followed), or None when not cached."""
        try:
            path = self.resolve(role, alternative)
        except ModelNotFoundError:
            return None
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    def describe(self) -> list[dict]:
        """Rows for ``animate124 models list``: role, repo, revision, licence, cached, size, source."""
        from animate124.models.registry import ROLES

        rows = []
        for role in ROLES:
            try:
                src = self.source(role)
                repo, revision = (
                    (str(src.local_dir), "local") if src.local_dir else (src.spec.repo_id, src.spec.revision)
                )
                origin = src.origin
            except ModelNotFoundError as err:  # broken local override: still list the role
                spec, repo, revision, origin = get_role(role), f"<invalid: {err.message}>", "", "override"
                src = Source(role, None, spec)
            size = self.cached_size(role) if not repo.startswith("<invalid") else None
            rows.append(
                {
                    "role": role, "repo": repo, "revision": revision, "licence": src.spec.licence,
                    "licence_note": src.spec.licence_note, "cached": size is not None, "size": size,
                    "approx_download_bytes": src.spec.approx_size_bytes, "source": origin,
                    "description": src.spec.description,
                }
            )  # fmt: skip
        return rows

    # ------------------------------------------------------------------ download

    def _endpoint(self) -> str:
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT

    def _preflight(self, endpoint: str) -> None:
        """Fail in seconds when the Hub host does not accept TCP connections.

        Skipped behind a proxy (the direct connection may be blocked while the proxy works)."""
        if any(
            os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
        ):
            return
        url = urlparse(endpoint)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as err:
            raise DownloadError(
                f"cannot reach the model hub at {endpoint} ({err.__class__.__name__}: {err})",
                hint="check the network / proxy settings (HTTPS_PROXY), or HF_ENDPOINT for a mirror",
            ) from err

    def download(self, role: str, progress: bool = True, alternative: str | None = None) -> Path:
        """Fetch ``role``'s files into the cache (resumable) and return the snapshot folder.

        Already complete -> returns at once without network. Offline or Hub unreachable -> raises
        :class:`DownloadError` within a few seconds. Concurrent downloads of one role (several
        processes sharing a cache) are serialised by a file lock per role: the second process waits,
        then finds the files cached."""
        src = self.source(role, alternative)
        if src.local_dir is not None:
            return self.resolve(role, alternative)
        if self._whole(role, alternative):
            return self.resolve(role, alternative)
        if self.offline:
            raise DownloadError(
                f"cannot download {src.spec.repo_id} for role {role!r}: offline mode is on",
                hint="unset HF_HUB_OFFLINE / ANIMATE124_OFFLINE (or --offline) and retry",
            )
        from animate124.fileio import file_lock

        lock = self.cache_dir / ".locks" / f"{role}{'-' + alternative if alternative else ''}.lock"
        with file_lock(lock):
            if self._whole(role, alternative, repair=True):  # another process finished it while we waited
                return self.resolve(role, alternative)
            return self._download(src, role, progress)

    def _whole(self, role: str, alternative: str | None, repair: bool = False) -> bool:
        """Cached with every file whole (structure only; ``verify`` also hashes). ``repair``: remove the
        damaged files (the snapshot's link and its blob) so that the download fetches them again."""
        if not self.is_cached(role, alternative):
            return False
        folder = self.resolve(role, alternative)
        damaged = folder_problems(folder)
        if not damaged:
            return True
        if repair:
            for rel, what in damaged:
                f = folder / rel
                log.warning("%s %s: fetching it again", f, what)
                target = Path(os.path.realpath(f))
                for p in {f, target}:
                    if p.is_relative_to(self.hub_dir):
                        p.unlink(missing_ok=True)
        return False

    def _download(self, src: Source, role: str, progress: bool) -> Path:
        spec = src.spec
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        endpoint = self._endpoint()
        try:
            self._preflight(endpoint)
        except DownloadError as err:
            raise DownloadError(
                f"cannot download {spec.repo_id} for role {role!r}: {err.message}", err.hint
            ) from err
        kw = dict(
            repo_id=spec.repo_id, revision=spec.revision, cache_dir=self.hub_dir, token=self.token,
            etag_timeout=ETAG_TIMEOUT_S, endpoint=endpoint, ignore_patterns=list(spec.ignore_patterns) or None,
        )  # fmt: skip
        t0 = time.monotonic()
        try:
            patterns = list(spec.allow_patterns)
            if spec.auto_weights:
                listing = snapshot_download(**kw, dry_run=True)
                files = [info.filename for info in listing]
                patterns += [f for f in pick_weight_files(files, spec.ignore_patterns) if f not in patterns]
            if not progress:
                disable_progress_bars()
            try:
                path = Path(snapshot_download(**kw, allow_patterns=patterns))
            finally:
                if not progress:
                    enable_progress_bars()
        except Exception as err:  # network, auth (gated repo), missing revision: one clear error
            raise _download_error(spec, err) from err
        missing = missing_components(path, spec)
        if missing:
            raise DownloadError(
                f"download of {spec.repo_id}@{spec.revision} finished but lacks {', '.join(missing)}",
                hint="the repo layout changed or the Hub could not be reached; override the role with a local folder",
            )
        log.info("downloaded %s (%s) in %.1f s", spec.repo_id, role, time.monotonic() - t0)
        return path

    # ------------------------------------------------------------------ verify

    def verify(self, role: str, alternative: str | None = None, hashes: bool = True) -> list[str]:
        """Problems with the cached files of ``role`` (empty list = ok).

        Checks: required components present for the detected layout; every file readable, safetensors
        headers agree with the file size (truncation), ``.bin`` files are complete zip archives, JSON
        configs parse; and with ``hashes``: the registry's expected sha256 of the files it knows
        (``RoleSpec.file_sha256``, checked only for the revision it belongs to) and, for files stored as
        ``blobs/<sha256>`` (LFS files in a real HF cache), the sha256 of the content."""
        src = self.source(role, alternative)
        folder = src.local_dir or self._snapshot(src.spec)
        if folder is None:
            return [f"{role}: not cached ({src.spec.repo_id}); run `{download_command(role, alternative)}`"]
        problems = [f"{role}: missing {m}" for m in missing_components(folder, src.spec)]
        problems += [f"{role}: {rel} {what}" for rel, what in folder_problems(folder)]
        if not hashes:
            return problems
        expected = src.spec.file_sha256 if src.local_dir is None and self._pinned(src.spec, folder) else {}
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(folder).as_posix()
            want = expected.get(rel)
            blob = Path(os.path.realpath(f)).name if f.is_symlink() else ""
            if not want and not _HEX64.fullmatch(blob):
                continue
            try:
                got = _sha256(f)
            except OSError as err:
                problems.append(f"{role}: {rel} cannot be read: {err.strerror or err}")
                continue
            if want and got != want:
                problems.append(f"{role}: {rel}: sha256 {got[:12]}… is not the expected {want[:12]}…")
            elif _HEX64.fullmatch(blob) and got != blob:
                problems.append(f"{role}: {rel}: sha256 mismatch (blob {blob[:12]}…)")
        return problems

    def _pinned(self, spec: RoleSpec, folder: Path) -> bool:
        """Whether ``folder`` is the snapshot of the revision ``spec.file_sha256`` describes: the pinned
        commit itself, or (for a role pinned only by its files' hashes) any snapshot of that repo. The
        tiny factory's models are never held to the real files' hashes."""
        if not spec.file_sha256 or is_tiny_cache(self.cache_dir):
            return False
        return not _HEX40.fullmatch(spec.revision) or folder.name == spec.revision

    def damaged_hint(self, role: str, alternative: str | None = None) -> str:
        """What to do about a damaged file of ``role``'s model (the tiny models are rebuilt, real ones
        downloaded again)."""
        if is_tiny_cache(self.cache_dir):
            return (
                f"the tiny test models are random and built on first use: delete {self.cache_dir} and run the "
                "command again to rebuild them (`animate124 models verify --tiny` checks them)"
            )
        cmd = download_command(role, alternative)
        return f"run `{cmd}` to fetch the damaged files again (`animate124 models verify {role}` lists them)"

    def damage(self, role: str, folder: Path, alternative: str | None = None) -> ModelNotFoundError | None:
        """A ModelNotFoundError naming the first missing, unreadable or damaged file of ``role``'s model
        in ``folder`` (None when its files look whole): what a failed load is explained with."""
        found = folder_problems(folder)
        if not found:
            return None
        rel, what = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return ModelNotFoundError(
            f"model file {folder / rel} of role {role!r} {what}{more}",
            hint=self.damaged_hint(role, alternative),
        )


# ---------------------------------------------------------------------- helpers (no torch)


def _download_error(spec: RoleSpec, err: Exception) -> DownloadError:
    name = err.__class__.__name__
    text = str(err).splitlines()[0] if str(err) else name
    low = (name + " " + str(err)).lower()
    if "401" in low or "403" in low or "gated" in low or "unauthorized" in low:
        hint = f"accept the licence on https://huggingface.co/{spec.repo_id} and set HF_TOKEN"
    elif "connect" in low or "timeout" in low or "network" in low or "resolve" in low:
        hint = "check the network / proxy settings, or HF_ENDPOINT for a mirror"
    elif "revision" in low or "404" in low or "not found" in low:
        hint = f"check the repo id / revision ({spec.repo_id}@{spec.revision}) or override the role"
    else:
        hint = "retry (downloads resume), or override the role with a local folder"
    return DownloadError(f"download of {spec.repo_id}@{spec.revision} failed: {name}: {text}", hint=hint)


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file() for n in WEIGHT_FILE_NAMES)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def projection_folder(root: Path) -> Path | None:
    """Zero123 camera-projection folder: ``clip_camera_projection/`` (bennyguo, ashawkey) or
    ``cc_projection/`` (kxic, Yuyang-z), whichever holds a config and weights."""
    for name in ("clip_camera_projection", "cc_projection"):
        if (root / name / "config.json").is_file() and _has_weights(root / name):
            return root / name
    return None


def missing_components(root: Path, spec: RoleSpec) -> list[str]:
    """Required files of ``spec.components`` absent from ``root`` (names like ``unet/config.json``)."""
    missing: list[str] = []
    for sub, kind in spec.components:
        folder = root / sub if sub else root
        prefix = f"{sub}/" if sub else ""
        if kind == "model":
            if not (folder / "config.json").is_file():
                missing.append(prefix + "config.json")
            if not _has_weights(folder):
                missing.append(prefix + "<weights>")
        elif kind == "tokenizer":
            if not _has_tokenizer(folder):
                missing.append(prefix + "vocab.json+merges.txt")
        elif kind == "scheduler":
            if not (folder / "scheduler_config.json").is_file():
                missing.append(prefix + "scheduler_config.json")
        elif kind == "projection":
            if projection_folder(folder) is None:
                missing.append(prefix + "clip_camera_projection/ or cc_projection/")
        elif kind.startswith("file:") and not (folder / kind[5:]).is_file():
            missing.append(prefix + kind[5:])
    return missing


def folder_problems(folder: Path) -> list[tuple[str, str]]:
    """``(relative path, what is wrong)`` for every file of a model folder that is unreadable or damaged
    (:func:`animate124.readers.check_file`: safetensors and ``.bin`` archives against their sizes, JSON
    configs parsed; broken links)."""
    from animate124.readers import check_file

    out: list[tuple[str, str]] = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_symlink() and not f.exists():
            out.append((rel, "is a broken link"))
            continue
        if not f.is_file() or not (f.suffix in (".safetensors", ".json") or f.name in WEIGHT_FILE_NAMES):
            continue
        problem = check_file(f)
        if problem:
            out.append((rel, problem))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
