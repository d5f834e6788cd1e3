"""The longest zip password each common tool opens: the limits the exhaust checks keys against.

    python -m benchmarks.zip_password_limits

For AES-256 zips (written by pyzipper, as the exhaust does) and ZipCrypto zips (written by 7z
with the password on stdin, as the exhaust does), and for passwords of ASCII and of 2-, 3- and
4-byte UTF-8 characters, prints the longest password (in characters and UTF-8 bytes) that 7-Zip,
pyzipper or zipfile, ``unzip -P`` and ``unzip``'s own prompt open, searching up to 1,024
characters. The passwords here are throwaway values, so this script does put them on command
lines; the exhaust never does.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pyzipper

DATA = b"User UUID,x\r\nu1,y\r\n"
MAX = 1024


def write_aes(path: Path, pw: str) -> bool:
    with pyzipper.AESZipFile(path, "w", encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(pw.encode("utf-8"))
        zf.writestr("r.csv", DATA)
    return True


def write_zipcrypto(path: Path, pw: str) -> bool:
    (path.parent / "r.csv").write_bytes(DATA)
    done = subprocess.run(
        ["7z", "a", "-tzip", "-mem=ZipCrypto", "-p", path.name, "r.csv"],
        cwd=path.parent,
        input=(pw + "\n").encode("utf-8"),
        capture_output=True,
        start_new_session=True,
    )
    return done.returncode == 0


def extracted(out: Path) -> bool:
    f = out / "r.csv"
    return f.exists() and f.read_bytes() == DATA


def open_7z(path: Path, pw: str) -> bool:
    out = path.parent / "7z-out"
    subprocess.run(["7z", "x", "-y", f"-p{pw}", f"-o{out}", str(path)], capture_output=True)
    return extracted(out)


def open_python(path: Path, pw: str) -> bool:
    try:
        with pyzipper.AESZipFile(path) as zf:  # reads ZipCrypto too
            return zf.read("r.csv", pwd=pw.encode("utf-8")) == DATA
    except (RuntimeError, zipfile.BadZipFile, ValueError):
        return False


def open_unzip_arg(path: Path, pw: str) -> bool:
    out = path.parent / "unzip-out"
    subprocess.run(["unzip", "-o", "-P", pw, "-d", str(out), str(path)], capture_output=True)
    return extracted(out)


def open_unzip_prompt(path: Path, pw: str) -> bool:
    """unzip asking for the password on a terminal, as a person would type it."""
    out = path.parent / "prompt-out"
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("unzip", ["unzip", "-o", "-d", str(out), str(path)])
    seen, after, sent, deadline = b"", b"", False, time.monotonic() + 5
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        if sent:
            after += chunk
            if b"password:" in after:
                break  # asked again: refused
            continue
        seen += chunk
        if b"password:" in seen:
            os.write(fd, pw.encode("utf-8") + b"\n")
            sent = True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(fd)
    return extracted(out)


def opens(write: Callable, read: Callable, pw: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.zip"
        return write(path, pw) and read(path, pw)


def longest(write: Callable, read: Callable, char: str) -> int:
    """The largest n <= MAX with char * n opening (0: none), assuming shorter ones open."""
    if opens(write, read, char * MAX):
        return MAX
    lo, hi = 0, MAX  # char * lo opens (or lo == 0), char * hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if opens(write, read, char * mid):
            lo = mid
        else:
            hi = mid
    return lo


def main() -> None:
    for tool in ("7z", "unzip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    readers = {
        "7-Zip": open_7z,
        "pyzipper/zipfile": open_python,
        "unzip -P": open_unzip_arg,
        "unzip prompt": open_unzip_prompt,
    }
    for label, write, chars in (
        ("AES-256", write_aes, ("a", "é", "€", "😀")),
        ("ZipCrypto", write_zipcrypto, ("a", "é")),
    ):
        for char in chars:
            for name, read in readers.items():
                n = longest(write, read, char)
                size = len((char * n).encode("utf-8"))
                shown = f"{n} chars / {size} bytes" if n < MAX else f">= {MAX} chars"
                print(f"{label:9} {char!r:5} {name:17} longest that opens: {shown}")


if __name__ == "__main__":
    main()
