"""`python -m stream_r1 download`: the released files, fetched into ComfyUI's model folders and verified.

What is fetched (`RELEASES`, also the source of the links embedded in the shipped workflows):

| name        | repository                           | file(s)                                              | folder             |
|-------------|--------------------------------------|------------------------------------------------------|--------------------|
| stream_r1   | FrameX-AI/Stream-R1                  | Stream-R1-T2V-1.3B/stream_r1.pt                      | stream_r1          |
| vae         | Comfy-Org/Wan_2.1_ComfyUI_repackaged | split_files/vae/wan_2.1_vae.safetensors              | vae                |
| umt5        | Comfy-Org/Wan_2.1_ComfyUI_repackaged | split_files/text_encoders/umt5_xxl_fp16.safetensors  | text_encoders      |
| videoreward | KlingTeam/VideoReward                | the whole repository                                 | stream_r1/VideoReward |

Single files land flat in their folder under their own name (`models/vae/wan_2.1_vae.safetensors`), the way
ComfyUI's loaders list them; a whole repository keeps its layout inside its folder.

How: each file is downloaded (huggingface_hub's HTTP code: auth, redirects, retries) into a staging folder
inside the target models directory, as a `.part` file that a later run continues (HTTP Range) after an
interruption; then it is checked against the hub's record (the LFS sha256, or the git blob id for small
files, and the size) and only then renamed to its final name: a file under its final name is always a
complete, verified one. Files already present are checked the same way and kept.
The endpoint is $HF_ENDPOINT (read when called), so a mirror or a local test server can stand in for the hub.

Trust boundary: the endpoint's answers (a mirror, a proxy, a test server) are not trusted to name files. Every
path in a listing must be a plain relative POSIX path (no '..', '.', empty, absolute, backslash, drive or ':'
component, no control character, no Windows device name) and must stay inside its destination folder once
symlinks already there are followed; the whole listing is checked before anything is written, and one bad name
stops the command with one line (`UnsafeRemotePath`, exit code 2).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

log = logging.getLogger(__name__)

STAGING = ".stream_r1_download"
"""Staging folder (inside the target models directory) holding partial downloads until they are verified."""
HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Release:
    """One released artefact: a single file of a hub repository, or a whole repository (`path` None)."""

    name: str
    """Key for `--only`."""
    repo_id: str
    path: Optional[str]
    """File inside the repository; None = every file of the repository (its layout kept)."""
    folder: str
    """Destination, relative to the models directory (ComfyUI's folder names)."""
    description: str
    revision: str = "main"

    @property
    def filename(self) -> str:
        """Name under `folder`: the file's own name (flat, as ComfyUI's loaders list it); '' for a repository."""
        return self.path.rsplit("/", 1)[-1] if self.path else ""

    @property
    def url(self) -> str:
        """Browser/download link of the file (what workflows embed), or of the repository."""
        if self.path is None:
            return f"{HUB}/{self.repo_id}"
        return f"{HUB}/{self.repo_id}/resolve/{self.revision}/{self.path}"

    def destination(self, models_dir: Path) -> Path:
        return models_dir / self.folder / self.filename if self.path else models_dir / self.folder


RELEASES: tuple[Release, ...] = (
    Release("stream_r1", "FrameX-AI/Stream-R1", "Stream-R1-T2V-1.3B/stream_r1.pt", "stream_r1",
            "Stream-R1 causal Wan2.1-T2V-1.3B student (Stream-R1 Load Model)"),
    Release("vae", "Comfy-Org/Wan_2.1_ComfyUI_repackaged", "split_files/vae/wan_2.1_vae.safetensors", "vae",
            "Wan2.1 VAE (Load VAE)"),
    Release("umt5", "Comfy-Org/Wan_2.1_ComfyUI_repackaged", "split_files/text_encoders/umt5_xxl_fp16.safetensors",
            "text_encoders", "umT5-XXL text encoder, ComfyUI format with its tokenizer inside (Load CLIP, type wan)"),
    Release("videoreward", "KlingTeam/VideoReward", None, "stream_r1/VideoReward",
            "VideoReward reward model (saliency maps, training): model_config.json + checkpoint-*/"),
)
BY_NAME = {r.name: r for r in RELEASES}
SKIPPED_REPO_FILES = (".gitattributes",)
"""Files of a whole-repository release that are not needed."""


@dataclass(frozen=True)
class RemoteFile:
    """One file as the hub records it."""

    path: str
    size: int
    sha256: Optional[str]
    """The LFS object id (sha256 of the content) for LFS files, else None."""
    blob_id: str
    """The git blob id (sha1 of 'blob <size>\\0' + content)."""


class VerificationError(RuntimeError):
    pass


class UnsafeRemotePath(ValueError):
    """The hub (or the mirror at $HF_ENDPOINT) named a file that would land outside its destination folder."""


_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                              *(f"lpt{i}" for i in range(10))})


def safe_relative_path(path: object, where: str) -> str:
    """`path` from a hub listing, checked to be a plain relative POSIX path: 'a/b/c.json' -> 'a/b/c.json'.

    Refused (UnsafeRemotePath, one line naming `where` and the path): a non-string, an empty path or component
    ('a//b', 'a/'), '.' or '..', an absolute path, a backslash, ':' (drive letters, NTFS streams), NUL or any
    other control character, a component ending in '.' or ' ' (Windows strips those: '.. ' is '..') and Windows
    device names (CON, NUL, COM1.txt, ...). Nothing is rewritten: a name not already in this form is refused.
    """
    def refuse(why: str) -> UnsafeRemotePath:
        return UnsafeRemotePath(f"{where} lists the file {path!r}, {why}; refusing to download anything from it "
                                f"(check HF_ENDPOINT: a mirror must serve the hub's own file names)")

    if not isinstance(path, str) or not path:
        raise refuse("which is not a file name")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise refuse("which contains a control character (NUL, newline, ...)")
    if "\\" in path or ":" in path:
        raise refuse("which contains a backslash or ':' (a Windows separator, drive or stream)")
    if path.startswith("/"):
        raise refuse("an absolute path")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise refuse("whose path has an empty, '.' or '..' component")
        if part.endswith((".", " ")):
            raise refuse("with a component ending in '.' or ' ' (Windows would strip it)")
        if part.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_DEVICES:
            raise refuse("with a Windows device name as a component")
    return path


def confined(root: Path, relative: str) -> Path:
    """root / relative (a `safe_relative_path`), refused if symlinks already under root lead it outside root."""
    target = root.joinpath(*relative.split("/"))
    real_root, real = os.path.realpath(root), os.path.realpath(target)
    try:
        inside = os.path.commonpath([real_root, real]) == real_root
    except ValueError:                           # Windows: another drive
        inside = False
    if not inside:
        raise UnsafeRemotePath(f"{target} resolves to {real}, outside {real_root} (a symlink inside the destination "
                               f"points elsewhere); remove that link or download to another --dir")
    return target


def models_dir_for(comfyui: Optional[str], directory: Optional[str]) -> Path:
    """`--comfyui PATH` -> PATH/models; `--dir DIR` -> DIR (a models directory: vae/, text_encoders/, ...)."""
    if comfyui:
        root = Path(comfyui).expanduser()
        if not (root / "models").is_dir():
            raise FileNotFoundError(f"{root} has no models/ folder; pass the ComfyUI folder (the one with main.py) "
                                    f"or use --dir for a plain models directory")
        return root / "models"
    return Path(directory or "models").expanduser()


def select(only: Iterable[str] = ()) -> list[Release]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown release {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    return [r for r in RELEASES if not names or r.name in names]


def plan(releases: Iterable[Release], models_dir: Path) -> list[tuple[Release, Path]]:
    return [(r, r.destination(models_dir)) for r in releases]


def format_plan(items: list[tuple[Release, Path]]) -> str:
    lines = []
    for r, dest in items:
        what = f"{r.repo_id}/{r.path}" if r.path else f"{r.repo_id} (whole repository)"
        state = "present" if dest.is_file() or (r.path is None and dest.is_dir() and any(dest.iterdir())) else "missing"
        lines.append(f"{r.name:<12} {what}\n{'':<12} -> {dest}  [{state}]  {r.description}")
    return "\n".join(lines)


# ---- hashing ------------------------------------------------------------------------------------------------
def file_digests(path: Path, chunk: int = 1 << 24) -> tuple[str, str]:
    """(sha256, git blob id) of a file, read once."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    """Raise VerificationError unless `path` has the size and hash the hub records for `remote`."""
    size = path.stat().st_size
    if size != remote.size:
        raise VerificationError(f"{path}: {size} bytes, the hub records {remote.size} for {remote.path}")
    sha256, blob = file_digests(path)
    if remote.sha256 is not None and sha256 != remote.sha256:
        raise VerificationError(f"{path}: sha256 {sha256} differs from the hub's {remote.sha256} for {remote.path}")
    if remote.sha256 is None and blob != remote.blob_id:
        raise VerificationError(f"{path}: git blob id {blob} differs from the hub's {remote.blob_id} for {remote.path}")


# ---- the hub ------------------------------------------------------------------------------------------------
def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def _remote(entry, where: str) -> RemoteFile:
    lfs = getattr(entry, "lfs", None)
    size = getattr(entry, "size", None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UnsafeRemotePath(f"{where} lists {entry.path!r} with size {size!r}, not a byte count: the hub (or the "
                               f"HF_ENDPOINT mirror) sent a broken listing")
    return RemoteFile(safe_relative_path(entry.path, where), size,
                      getattr(lfs, "sha256", None) if lfs is not None else None, entry.blob_id)


def remote_files(release: Release, api) -> list[RemoteFile]:
    """What the hub records for the release's file(s): path, size, sha256 (LFS) and git blob id.

    Every path is checked (`safe_relative_path`) before anything is downloaded; a listing with one bad name, or
    with a name that is both a file and a folder, is refused as a whole.
    """
    from huggingface_hub.hf_api import RepoFile

    where = f"{_endpoint()} ({release.repo_id}@{release.revision})"
    if release.path is not None:
        found = [e for e in api.get_paths_info(release.repo_id, [release.path], revision=release.revision)
                 if isinstance(e, RepoFile)]
        if not found:
            raise FileNotFoundError(f"{release.repo_id} has no file {release.path} at {release.revision}")
        remote = _remote(found[0], where)
        if remote.path != release.path:
            raise UnsafeRemotePath(f"{where} answered for {remote.path!r} when asked for {release.path!r}; "
                                   f"refusing to download it (check HF_ENDPOINT)")
        return [remote]
    entries = api.list_repo_tree(release.repo_id, recursive=True, revision=release.revision)
    files = [_remote(e, where) for e in entries if isinstance(e, RepoFile)]
    files = [f for f in files if f.path.rsplit("/", 1)[-1] not in SKIPPED_REPO_FILES]
    if not files:
        raise FileNotFoundError(f"{release.repo_id} lists no files at {release.revision}")
    folders = {f.path.rsplit("/", i)[0] for f in files for i in range(1, f.path.count("/") + 1)}
    seen: set[str] = set()
    for f in files:
        if f.path in seen or f.path in folders:
            raise UnsafeRemotePath(f"{where} lists {f.path!r} twice, or as a file and a folder; refusing to "
                                   f"download anything from it")
        seen.add(f.path)
    return sorted(files, key=lambda f: f.path)


def _download(release: Release, remote: RemoteFile, staging: Path, endpoint: str) -> Path:
    """Download one file into `staging`, resuming a partial download left by an earlier run. Returns its path.

    The partial file is named after the hub's hash of the file, so a part of an older version is never
    continued. Plain HTTP through huggingface_hub's own `http_get` (auth headers, Range, retries with resume
    inside a run); `hf_hub_download` of huggingface_hub 2.4 deletes its partial file when a run fails, so the part
    file is ours.
    """
    from urllib.parse import urlparse

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(release.repo_id, remote.path, revision=release.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    headers = build_hf_headers(library_name="stream_r1")
    if urlparse(meta.location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)           # never send a token to a CDN (as huggingface_hub does)
    part = confined(staging, f"{remote.path}.{(remote.sha256 or remote.blob_id)[:16]}.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.is_file() and part.stat().st_size > remote.size:
        part.unlink()
    with open(part, "ab") as f:
        http_get(meta.location, f, resume_size=f.tell(), headers=headers, expected_size=remote.size,
                 displayed_filename=remote.path.rsplit("/", 1)[-1])
    return part


def _fetch_one(release: Release, remote: RemoteFile, final: Path, staging: Path, endpoint: str,
               say: Callable[[str], None]) -> str:
    """Bring one file to `final`, verified. Returns 'kept' or 'downloaded'."""
    if final.is_file():
        try:
            verify(final, remote)
            return "kept"
        except VerificationError as e:
            say(f"  {final.name}: present but does not match the hub ({e}); downloading again")
    got = _download(release, remote, staging, endpoint)
    try:
        verify(got, remote)
    except VerificationError:
        got.unlink(missing_ok=True)              # never keep a bad file, not even as a part to resume
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, final)                       # same filesystem: staging lives in the models directory
    return "downloaded"


def fetch(releases: Iterable[Release], models_dir: Path, say: Callable[[str], None] = print) -> list[Path]:
    """Download (or keep) every file of `releases` under `models_dir`; returns the final paths."""
    from huggingface_hub import HfApi

    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint)
    staging_root = models_dir / STAGING
    done: list[Path] = []
    listed = []                                  # every listing checked and confined before the first byte is written
    for release in releases:
        files = remote_files(release, api)
        finals = [release.destination(models_dir) if release.path is not None
                  else confined(release.destination(models_dir), remote.path) for remote in files]
        listed.append((release, files, finals))
    for release, files, finals in listed:
        staging = staging_root / release.name
        say(f"{release.name}: {release.repo_id} ({len(files)} file{'s' * (len(files) != 1)}, "
            f"{sum(f.size for f in files) / 1e9:.2f} GB) -> {release.destination(models_dir)}")
        for remote, final in zip(files, finals):
            status = _fetch_one(release, remote, final, staging, endpoint, say)
            say(f"  {status:<10} {final}  (verified: {'sha256' if remote.sha256 else 'git blob id'})")
            done.append(final)
        shutil.rmtree(staging, ignore_errors=True)   # only reached when every file of the release is verified
    if staging_root.is_dir() and not any(staging_root.iterdir()):
        staging_root.rmdir()
    return done


# ---- command line ---------------------------------------------------------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("download", help="fetch the released weights into ComfyUI's model folders",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder: files go to PATH/models/<folder>")
    where.add_argument("--dir", metavar="DIR", help="models directory to fill (default ./models)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"fetch only these (repeatable or comma-separated): {', '.join(BY_NAME)}")
    p.add_argument("--list", action="store_true", help="print what would be fetched and where, then stop")
    return p


def _network_errors() -> tuple[type, ...]:
    """Exceptions of a failed transfer: the hub's HTTP errors and those of whichever HTTP client it uses."""
    import importlib

    from huggingface_hub.utils import HfHubHTTPError

    found: list[type] = [HfHubHTTPError, OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def run(args) -> int:
    models_dir = models_dir_for(args.comfyui, args.dir)
    releases = select(args.only)
    if args.list:
        print(format_plan(plan(releases, models_dir)))
        return 0
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        print("error: HF_HUB_OFFLINE is set; unset it (or set HF_HUB_OFFLINE=0) to download", file=sys.stderr)
        return 2
    for name in ("httpx", "httpx2", "httpcore"):      # not a log line per HTTP request: `fetch` says what happens
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    try:
        fetch(releases, models_dir)
    except VerificationError as e:
        print(f"error: {e}; the bad file was deleted, run the command again", file=sys.stderr)
        return 3
    except _network_errors() as e:
        if isinstance(e, FileNotFoundError):
            raise
        print(f"error: {type(e).__name__}: {e}\nwhat was downloaded so far is kept in {models_dir / STAGING}; run the "
              f"command again to continue", file=sys.stderr)
        return 4
    return 0
