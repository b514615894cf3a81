"""Safe extraction of uploaded servable packages (tar, tar.gz, zip).

An upload is hostile until proven otherwise. Every archive is listed and checked as a whole before a single
byte is written: absolute names, ``..`` components, backslashes, links leaving the folder (or reached through
another link), hard links to anything but an earlier regular member, device files and fifos reject the whole
package with ``UnsafePackage`` naming the member. Sizes and member counts are checked before writing (from the
headers) and again while writing (from the bytes actually produced), so a zip bomb stops at the limit.
Tar members are then written by ``tarfile`` with ``filter="data"`` as a second line of defence, and the
finished tree is walked once more to confirm that no link resolves outside it.
"""

from __future__ import annotations

import enum
import io
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from dlhub.common.errors import BuildFailed, PayloadTooLarge, UnsafePackage

ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")
MAX_LINK_TARGET_BYTES: Final = 4096
COPY_CHUNK_BYTES: Final = 1024 * 1024
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member, reduced to what the safety checks need."""

    name: str
    """Normalised relative POSIX path ("" for the archive root itself)."""
    kind: EntryKind
    size: int = 0
    link: str = ""
    """Symlink: the raw target, relative to the link's folder. Hard link: the normalised member it names."""


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    max_extracted_bytes: int
    max_files: int


def detect_format(data: bytes, declared: str) -> str:
    """Return "zip", "tar" or "none", trusting the bytes over the declared format."""
    if not data:
        return "none"
    if data.startswith(ZIP_MAGIC):
        return "zip"
    if declared == "none":
        raise BuildFailed("package bytes were sent with package_format 'none'")
    return "tar"


def extract_package(data: bytes, declared_format: str, dest: Path, limits: ExtractLimits) -> None:
    """Check the whole archive, then extract it into the existing, empty folder ``dest``."""
    fmt = detect_format(data, declared_format)
    if fmt == "zip":
        _extract_zip(data, dest, limits)
    elif fmt == "tar":
        _extract_tar(data, dest, limits)
    verify_tree(dest)


# --- checks shared by both formats ---------------------------------------------------------------------


def normalize_member_name(raw: str) -> str:
    """Turn an archive member name into a safe relative path or raise ``UnsafePackage``."""
    if "\x00" in raw:
        raise UnsafePackage(f"member {raw!r} has a NUL byte in its name")
    if "\\" in raw:
        raise UnsafePackage(f"member {raw!r} has a backslash in its name")
    if raw.startswith("/") or _DRIVE_RE.match(raw):
        raise UnsafePackage(f"member {raw!r} has an absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePackage(f"member {raw!r} has a '..' path component")
    return "/".join(parts)


def _parents(name: str) -> Iterable[str]:
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _check_symlink_target(entry: Entry, symlinks: set[str]) -> None:
    target = entry.link
    if not target or "\x00" in target or "\\" in target:
        raise UnsafePackage(f"symlink {entry.name!r} has an invalid target {target!r}")
    if target.startswith("/") or _DRIVE_RE.match(target):
        raise UnsafePackage(f"symlink {entry.name!r} points to the absolute path {target!r}")
    # Resolve lexically, refusing to step through another link: "x/.." is only "." if x is not a link.
    stack = entry.name.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if stack and "/".join(stack) in symlinks:
            raise UnsafePackage(f"symlink {entry.name!r} resolves through another link ({target!r})")
        if part == "..":
            if not stack:
                raise UnsafePackage(f"symlink {entry.name!r} points outside the package ({target!r})")
            stack.pop()
        else:
            stack.append(part)


def check_entries(entries: Sequence[Entry]) -> None:
    """Reject the package unless every member stays inside the folder once extracted."""
    kinds: dict[str, EntryKind] = {}
    for entry in entries:
        previous = kinds.get(entry.name)
        if previous is not None and not (previous is EntryKind.DIR and entry.kind is EntryKind.DIR):
            raise UnsafePackage(f"member {entry.name!r} appears more than once")
        if entry.name == "" and entry.kind is not EntryKind.DIR:
            raise UnsafePackage("a non-directory member has an empty name")
        kinds[entry.name] = entry.kind
    symlinks = {name for name, kind in kinds.items() if kind is EntryKind.SYMLINK}
    seen_files: set[str] = set()
    for entry in entries:
        for parent in _parents(entry.name):
            parent_kind = kinds.get(parent)
            if parent_kind is EntryKind.SYMLINK:
                raise UnsafePackage(f"member {entry.name!r} is reached through the link {parent!r}")
            if parent_kind is not None and parent_kind is not EntryKind.DIR:
                raise UnsafePackage(f"member {entry.name!r} is inside the non-directory {parent!r}")
        if entry.kind is EntryKind.SYMLINK:
            _check_symlink_target(entry, symlinks)
        elif entry.kind is EntryKind.HARDLINK and entry.link not in seen_files:
            raise UnsafePackage(
                f"hard link {entry.name!r} does not point to an earlier regular file ({entry.link!r})"
            )
        if entry.kind in (EntryKind.FILE, EntryKind.HARDLINK):
            seen_files.add(entry.name)


class _Budget:
    """Counts members and bytes against the limits, before and while writing."""

    def __init__(self, limits: ExtractLimits) -> None:
        self.limits = limits
        self.members = 0
        self.declared_bytes = 0
        self.written_bytes = 0

    def add_member(self, name: str, size: int) -> None:
        self.members += 1
        if self.members > self.limits.max_files:
            raise PayloadTooLarge(f"package has more than {self.limits.max_files} members")
        if size < 0:
            raise UnsafePackage(f"member {name!r} declares a negative size")
        self.declared_bytes += size
        if self.declared_bytes > self.limits.max_extracted_bytes:
            raise PayloadTooLarge(
                f"package would extract to more than {self.limits.max_extracted_bytes} bytes (at {name!r})"
            )

    def add_written(self, name: str, size: int) -> None:
        self.written_bytes += size
        if self.written_bytes > self.limits.max_extracted_bytes:
            raise PayloadTooLarge(
                f"package extracts to more than {self.limits.max_extracted_bytes} bytes (at {name!r})"
            )


# --- tar -----------------------------------------------------------------------------------------------


def _tar_entry(member: tarfile.TarInfo) -> Entry:
    name = normalize_member_name(member.name)
    if member.isreg():
        return Entry(name, EntryKind.FILE, member.size)
    if member.isdir():
        return Entry(name, EntryKind.DIR)
    if member.issym():
        return Entry(name, EntryKind.SYMLINK, link=member.linkname)
    if member.islnk():
        try:
            target = normalize_member_name(member.linkname)
        except UnsafePackage as exc:
            raise UnsafePackage(f"hard link {member.name!r} has an unsafe target: {exc.message}") from exc
        return Entry(name, EntryKind.HARDLINK, link=target)
    raise UnsafePackage(f"member {member.name!r} is a device, fifo or other special file")


TAR_FILTERS = hasattr(tarfile, "data_filter")
"""Whether this Python has tarfile's extraction filters (3.11.4+; Debian 12's 3.11.2 has not)."""
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if TAR_FILTERS else ()


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, entry: Entry) -> None:
    """Write one checked member. Without tarfile's filters our own checks are the only line of defence,
    so attributes are not taken from the archive: files get 0644, or 0755 when any execute bit was set
    (what ``filter="data"`` leaves too), never setuid/setgid bits or the archive's owner."""
    if TAR_FILTERS:
        tar.extract(member, path=dest, set_attrs=True, filter="data")
        return
    tar.extract(member, path=dest, set_attrs=False)
    if entry.kind is EntryKind.FILE:
        os.chmod(dest / entry.name, 0o755 if member.mode & 0o111 else 0o644)


def _extract_tar(data: bytes, dest: Path, limits: ExtractLimits) -> None:
    budget = _Budget(limits)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            # Stream the listing so that a bomb stops at the limit instead of being inflated to list it.
            pairs: list[tuple[tarfile.TarInfo, Entry]] = []
            for member in tar:
                entry = _tar_entry(member)
                budget.add_member(member.name, entry.size)
                pairs.append((member, entry))
            check_entries([entry for _, entry in pairs])
            for member, entry in pairs:
                if entry.name == "":
                    continue
                _extract_member(tar, member, dest, entry)
                if entry.kind is EntryKind.FILE:
                    budget.add_written(member.name, os.lstat(dest / entry.name).st_size)
    except _FILTER_ERRORS as exc:
        raise UnsafePackage(f"unsafe member: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise BuildFailed(f"package is not a readable tar archive: {exc}") from exc
    except OSError as exc:
        raise BuildFailed(f"could not extract package: {exc}") from exc


# --- zip -----------------------------------------------------------------------------------------------


def _zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Entry:
    name = normalize_member_name(info.filename)
    if info.flag_bits & 0x1:
        raise BuildFailed(f"member {info.filename!r} is encrypted; encrypted packages are not supported")
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or file_type == stat.S_IFDIR:
        return Entry(name, EntryKind.DIR)
    if file_type == stat.S_IFLNK:
        if info.file_size > MAX_LINK_TARGET_BYTES:
            raise UnsafePackage(f"symlink {info.filename!r} has an oversize target")
        with zf.open(info) as handle:
            raw_target = handle.read(MAX_LINK_TARGET_BYTES + 1)
        if len(raw_target) > MAX_LINK_TARGET_BYTES:
            raise UnsafePackage(f"symlink {info.filename!r} has an oversize target")
        try:
            target = raw_target.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafePackage(f"symlink {info.filename!r} has an undecodable target") from exc
        return Entry(name, EntryKind.SYMLINK, link=target)
    if file_type in (0, stat.S_IFREG):
        return Entry(name, EntryKind.FILE, info.file_size)
    raise UnsafePackage(f"member {info.filename!r} is a device, fifo or other special file")


def _open_new_file(path: Path, mode: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags, mode)


def _copy_zip_member(source: IO[bytes], path: Path, entry: Entry, mode: int, budget: _Budget) -> None:
    fd = _open_new_file(path, mode)
    with os.fdopen(fd, "wb") as out:
        written = 0
        while chunk := source.read(COPY_CHUNK_BYTES):
            written += len(chunk)
            if written > entry.size:
                raise UnsafePackage(f"member {entry.name!r} inflates beyond its declared size")
            budget.add_written(entry.name, len(chunk))
            out.write(chunk)


def _extract_zip(data: bytes, dest: Path, limits: ExtractLimits) -> None:
    budget = _Budget(limits)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_files:
                raise PayloadTooLarge(f"package has more than {limits.max_files} members")
            pairs: list[tuple[zipfile.ZipInfo, Entry]] = []
            for info in infos:
                entry = _zip_entry(zf, info)
                budget.add_member(info.filename, entry.size)
                pairs.append((info, entry))
            check_entries([entry for _, entry in pairs])
            for info, entry in pairs:
                if entry.name == "":
                    continue
                path = dest / entry.name
                if entry.kind is EntryKind.DIR:
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                if entry.kind is EntryKind.SYMLINK:
                    os.symlink(entry.link, path)
                    continue
                mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
                with zf.open(info) as source:
                    _copy_zip_member(source, path, entry, mode, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise BuildFailed(f"package is not a readable zip archive: {exc}") from exc
    except OSError as exc:
        raise BuildFailed(f"could not extract package: {exc}") from exc


# --- after extraction ----------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def verify_tree(root: Path) -> None:
    """Confirm that the extracted tree holds only files, folders and links that stay inside it."""
    real_root = os.path.realpath(root)
    for folder, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = posixpath.normpath(os.path.relpath(path, root))
            if stat.S_ISLNK(st.st_mode):
                if not _inside(os.path.realpath(path), real_root):
                    raise UnsafePackage(f"link {rel!r} resolves outside the package")
            elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise UnsafePackage(f"member {rel!r} is not a regular file or folder")
