"""The file the program manager downloads: a zip, password protected by default.

PASSWORD_PROTECTED_DATASET: AES-256 (WinZip AE-2) with the request's ``encryption_key``; opens
in 7-Zip, WinZip, macOS Archive Utility and Python's pyzipper. ``PUI_ZIP_ENCRYPTION=zipcrypto``
writes the legacy PKWARE encryption Sunbird used, for readers that cannot open AES zips; it is
weak (a known plaintext such as the CSV header recovers the keys in minutes) and is made with
the ``7z`` tool. PLAIN_DATASET: a plain zip.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pyzipper

PLAIN = "PLAIN_DATASET"
PROTECTED = "PASSWORD_PROTECTED_DATASET"
LEVELS = (PLAIN, PROTECTED)
ENCRYPTIONS = ("aes256", "zipcrypto")


class ArchiveError(RuntimeError):
    pass


def pack(csv_path: Path, level: str, password: str | None, encryption: str = "aes256") -> Path:
    """Zip ``csv_path`` next to itself as ``<stem>.zip``, remove the CSV, return the zip."""
    target = csv_path.with_suffix(".zip")
    target.unlink(missing_ok=True)
    if level == PLAIN:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(csv_path, csv_path.name)
    elif not password:
        raise ArchiveError("the request has no encryption_key to protect the report with")
    elif encryption == "zipcrypto":
        seven = shutil.which("7z")
        if seven is None:
            raise ArchiveError("PUI_ZIP_ENCRYPTION=zipcrypto needs the 7z tool (p7zip-full)")
        done = subprocess.run(
            [seven, "a", "-tzip", "-mem=ZipCrypto", f"-p{password}", str(target), csv_path.name],
            cwd=csv_path.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ArchiveError(f"7z could not write the zip (exit {done.returncode})")
    else:
        with pyzipper.AESZipFile(
            target, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
        ) as zf:
            zf.setpassword(password.encode("utf-8"))
            zf.setencryption(pyzipper.WZ_AES, nbits=256)
            zf.write(csv_path, csv_path.name)
    csv_path.unlink()
    return target
