"""The file the program manager downloads: a zip, password protected by default.

PASSWORD_PROTECTED_DATASET: AES-256 (WinZip AE-2) with the request's ``encryption_key``; opens
in 7-Zip, WinZip, macOS Archive Utility and Python's pyzipper (not in Info-ZIP ``unzip``, which
has no AES). ``PUI_ZIP_ENCRYPTION=zipcrypto`` writes the legacy PKWARE encryption Sunbird used,
for readers that cannot open AES zips; it is weak (a known plaintext such as the CSV header
recovers the keys in minutes) and is made with the ``7z`` tool, which reads the password from
its standard input: a command line is visible to every user of the machine (``ps``,
``/proc/<pid>/cmdline``). PLAIN_DATASET: a plain zip.

Password limits, measured (docs/exhaust.md has the table): 7-Zip opens AES zips only when the
password has at most 99 bytes in UTF-8 (it reports "Wrong password" from 100 on); 7-Zip writes
ZipCrypto only with printable ASCII passwords, and ``unzip`` takes at most 80 characters when
it asks for one. Longer or other keys are refused before any data is read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pyzipper

PLAIN = "PLAIN_DATASET"
PROTECTED = "PASSWORD_PROTECTED_DATASET"
LEVELS = (PLAIN, PROTECTED)
ENCRYPTIONS = ("aes256", "zipcrypto")
AES_MAX_BYTES = 99
ZIPCRYPTO_MAX_CHARS = 80


def seven_zip() -> str | None:
    """The 7z program ZipCrypto needs, or None when it is not installed."""
    return shutil.which("7z")


def key_problem(key: str | None, level: str, encryption: str) -> str | None:
    """Why ``key`` cannot protect a report that common unzip tools open, or None."""
    if not key:
        return "Not a Valid Request"
    if level == PLAIN:
        return None
    if not key.isprintable():
        return (
            "the encryption_key has a control character (newline, tab, ...): "
            "unzip tools cannot take it as a password"
        )
    if encryption == "zipcrypto":
        if not key.isascii():
            return (
                "the encryption_key has a non-ASCII character: ZipCrypto zips take only "
                "printable ASCII passwords (7-Zip refuses others)"
            )
        if len(key) > ZIPCRYPTO_MAX_CHARS:
            return (
                f"the encryption_key has {len(key)} characters: at most "
                f"{ZIPCRYPTO_MAX_CHARS} can be typed into unzip's password prompt"
            )
        return None
    size = len(key.encode("utf-8"))
    if size > AES_MAX_BYTES:
        return (
            f"the encryption_key is {size} bytes long in UTF-8: 7-Zip opens AES-256 zips only "
            f"with passwords of at most {AES_MAX_BYTES} bytes"
        )
    return None


def _private(path: Path):
    """A new file only its owner can read, whatever the umask."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class ArchiveError(RuntimeError):
    pass


def pack(csv_path: Path, level: str, password: str | None, encryption: str = "aes256") -> Path:
    """Zip ``csv_path`` next to itself as ``<stem>.zip`` (mode 0600), remove the CSV, return
    the zip."""
    target = csv_path.with_suffix(".zip")
    target.unlink(missing_ok=True)
    if level == PLAIN:
        with _private(target) as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(csv_path, csv_path.name)
    elif not password:
        raise ArchiveError("the request has no encryption_key to protect the report with")
    elif encryption == "zipcrypto":
        seven = seven_zip()
        if seven is None:
            raise ArchiveError(
                "PUI_ZIP_ENCRYPTION=zipcrypto needs the 7z program, which is not installed"
            )
        # "-p" without a value: 7z reads the password from standard input. Its own session
        # keeps it from asking an operator's terminal instead.
        done = subprocess.run(
            [seven, "a", "-tzip", "-mem=ZipCrypto", "-bd", "-p", str(target), csv_path.name],
            cwd=csv_path.parent,
            input=(password + "\n").encode("utf-8"),
            capture_output=True,
            check=False,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise ArchiveError(f"7z could not write the zip (exit {done.returncode})")
        os.chmod(target, 0o600)
    else:
        with (
            _private(target) as raw,
            pyzipper.AESZipFile(
                raw, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
            ) as zf,
        ):
            zf.setpassword(password.encode("utf-8"))
            zf.setencryption(pyzipper.WZ_AES, nbits=256)
            zf.write(csv_path, csv_path.name)
    csv_path.unlink()
    return target
