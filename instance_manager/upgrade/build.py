"""Builds of the instance manager for the online upgrade: make, hash, check, install.

A build is a **zipapp**: a zip file holding ``__main__.py`` and the ``instance_manager``
package (pure Python; the dependencies stay in the virtualenv that runs it). Its SHA-256 is
what the operator publishes in ``status.availableArchitectures[].hash`` for the
architecture of the instance (``instance_arch``), as CNPG publishes the hash of its binary.
Make one with::

    python -m instance_manager.upgrade.build OUT.pyz      # prints the SHA-256

Installing extracts the build into ``SCRATCH/manager/<sha256>/`` (a directory Python runs
as ``python DIR run ...``), keeps the zipapp itself beside it as ``<sha256>.pyz``, and then
points ``SCRATCH/manager/current`` at it with an atomic rename. ``SCRATCH/manager`` is 0700.

An installed build is trusted only as far as it still matches the zipapp whose hash names
it: ``verify_installed`` checks that (same files, byte for byte, nothing added) before an
installed build is reused and again right before the daemon re-executes into it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import NoReturn

import instance_manager

PACKAGE = "instance_manager"
MAIN = "__main__.py"
MAIN_SOURCE = "from instance_manager.cli import main\n\nraise SystemExit(main())\n"
HASH_FILE = ".build-sha256"  # in an installed build: the hash of the zipapp it came from
CURRENT = "current"
MAX_FILES = 5000
MAX_UNPACKED = 64 * 1024 * 1024
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # reproducible builds: same sources, same hash
_SKIPPED_PARTS = {"__pycache__"}
# Go's GOARCH names, which the operator matches against status.availableArchitectures.
GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "i686": "386",
    "armv7l": "arm",
}


class BuildError(Exception):
    """The uploaded build cannot be used."""


def instance_arch() -> str:
    """This machine's architecture, named as Go names it."""
    machine = platform.machine().lower()
    return GOARCH.get(machine, machine)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _package_files(package_dir: Path) -> list[Path]:
    files = []
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if path.is_file() and not _SKIPPED_PARTS & set(relative.parts) and path.suffix != ".pyc":
            files.append(path)
    return files


def make_zipapp(output: Path, package_dir: Path | None = None) -> str:
    """Write a reproducible build of ``package_dir`` (default: this one); return its hash."""
    source = package_dir or Path(instance_manager.__file__).parent
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        main = zipfile.ZipInfo(MAIN, _FIXED_TIME)
        main.external_attr = 0o644 << 16
        zf.writestr(main, MAIN_SOURCE, compress_type=zipfile.ZIP_DEFLATED)
        for path in _package_files(source):
            name = f"{PACKAGE}/{path.relative_to(source).as_posix()}"
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)
    return sha256_file(output)


def running_hash() -> str:
    """The hash of the running build, or of the package's files when not run from a build."""
    package_dir = Path(instance_manager.__file__).parent
    marker = package_dir.parent / HASH_FILE
    try:
        return marker.read_text().strip()
    except OSError:
        pass
    h = hashlib.sha256()
    for path in _package_files(package_dir):
        h.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _checked_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Every member, refusing what could escape the target directory or fill the disk."""
    members = zf.infolist()
    if len(members) > MAX_FILES:
        raise BuildError(f"too many files in the build ({len(members)})")
    total = 0
    for info in members:
        path = PurePosixPath(info.filename)
        mode = info.external_attr >> 16
        if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
            raise BuildError(f"unsafe path in the build: {info.filename!r}")
        if path.parts[0] not in (MAIN, PACKAGE) or stat.S_ISLNK(mode):
            raise BuildError(f"unexpected entry in the build: {info.filename!r}")
        total += info.file_size
    if total > MAX_UNPACKED:
        raise BuildError("the build unpacks to more than 64 MiB")
    names = {info.filename for info in members}
    if MAIN not in names or f"{PACKAGE}/__init__.py" not in names:
        raise BuildError(f"not an instance manager build: no {MAIN} or {PACKAGE}/__init__.py")
    return members


def unpack(archive: Path, target: Path) -> None:
    """Extract a build into the new directory ``target`` (blocking: run it in a thread)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _checked_members(zf)
            target.mkdir(mode=0o755)
            for info in members:
                if not info.is_dir():
                    zf.extract(info, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BuildError(f"the build is not a readable zip file: {exc}") from exc
    for root, dirs, files in os.walk(target):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


# Run by the new build's interpreter: imports the daemon's modules from the build itself.
IMPORT_CHECK = """
import sys
build = sys.argv[1]
sys.path.insert(0, build)
import instance_manager, instance_manager.cli, instance_manager.supervisor
import instance_manager.web.server, instance_manager.wal.thin
if not instance_manager.__file__.startswith(build + "/"):
    raise SystemExit("the build does not hold the package that was imported")
print(instance_manager.__version__)
"""


def _tree(build_dir: Path, refused: str) -> dict[str, Path]:
    """Every regular file of an installed build by its name in the zipapp, bytecode caches
    aside (the interpreter checks those against their sources); BuildError on anything else."""
    files: dict[str, Path] = {}
    for top, dirs, names in os.walk(build_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + names:
            path = Path(top, name)
            mode = path.lstat().st_mode
            if name in names and stat.S_ISREG(mode):
                files[path.relative_to(build_dir).as_posix()] = path
            elif not (name in dirs and stat.S_ISDIR(mode)):
                raise BuildError(f"{refused}: {path} is neither a regular file nor a directory")
    return files


def verify_installed(build_dir: Path) -> None:
    """Check ``build_dir`` against the zipapp beside it whose SHA-256 is its name: the same
    files with the same bytes, nothing added, and its hash marker. BuildError otherwise."""
    digest = build_dir.name
    archive = build_dir.parent / f"{digest}.pyz"
    refused = f"installed build {build_dir} refused"
    try:
        if sha256_file(archive) != digest:
            raise BuildError(f"{refused}: {archive} does not match its hash")
        if (build_dir / HASH_FILE).read_text().strip() != digest:
            raise BuildError(f"{refused}: its {HASH_FILE} names another build")
        found = _tree(build_dir, refused)
        with zipfile.ZipFile(archive) as zf:
            members = {info.filename: info for info in zf.infolist() if not info.is_dir()}
            extra = sorted(set(found) - set(members) - {HASH_FILE})
            missing = sorted(set(members) - set(found))
            if extra or missing:
                raise BuildError(f"{refused}: files added {extra}, missing {missing}")
            for name, info in members.items():
                if found[name].read_bytes() != zf.read(info):
                    raise BuildError(f"{refused}: {name} differs from the verified build")
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise BuildError(f"{refused}: {exc}") from exc


def install(staged: Path, root: Path, digest: str, archive: Path) -> Path:
    """Keep the verified zipapp ``archive`` as ``root/<digest>.pyz``, move the checked build
    to ``root/<digest>`` unless an identical one is there, and point ``root/current`` at it.

    An installed build that no longer matches is replaced. It may be the running build: its
    files are swapped for identical ones, so later imports find the same code.
    """
    os.replace(archive, root / f"{digest}.pyz")
    final = root / digest
    try:
        verify_installed(final)
        shutil.rmtree(staged)  # installed before, intact
    except BuildError:
        (staged / HASH_FILE).write_text(digest + "\n")
        stale = root / f".stale-{digest}-{os.getpid()}"
        if os.path.lexists(final):
            os.rename(final, stale)
        os.rename(staged, final)
        shutil.rmtree(stale, ignore_errors=True)
    link = root / f".{CURRENT}.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(digest)
    os.rename(link, root / CURRENT)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def prune(root: Path, keep: set[str]) -> list[str]:
    """Remove the installed builds (``<digest>`` and ``<digest>.pyz``) not in ``keep``;
    the digests removed. Without it, every upgrade would leave its predecessor behind."""
    removed = []
    for entry in sorted(root.iterdir()):
        digest = entry.name.removesuffix(".pyz")
        if digest in keep or not _is_digest(digest):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        if digest not in removed:
            removed.append(digest)
    return removed


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def current(root: Path) -> str | None:
    """The build ``root/current`` points at, if any."""
    try:
        return os.readlink(root / CURRENT)
    except OSError:
        return None


def point_current(root: Path, digest: str | None) -> None:
    """Put ``current`` back (after a failed re-exec); None removes it."""
    if digest is None:
        (root / CURRENT).unlink(missing_ok=True)
        return
    link = root / f".{CURRENT}.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(digest)
    os.rename(link, root / CURRENT)


def reexec_argv(build_dir: Path, argv: list[str]) -> list[str]:
    """The command line that runs ``build_dir`` with the current arguments."""
    return [sys.executable, str(build_dir), *argv[1:]]


def exec_installed(argv: list[str]) -> NoReturn:
    """Replace this process with ``argv`` (from ``reexec_argv``) once its build is verified:
    BuildError, and no exec, when the installed files no longer match their hash."""
    verify_installed(Path(argv[1]))
    os.execv(argv[0], argv)


def main(args: list[str]) -> int:
    if len(args) != 1:
        print("usage: python -m instance_manager.upgrade.build OUT.pyz", file=sys.stderr)
        return 2
    print(make_zipapp(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
