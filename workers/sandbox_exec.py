"""sandbox-exec, the small static program that starts a sandboxed action's launch chain, built
from `sandbox_exec.c` beside this file when a worker starts.

Built once per version of its source (the file name holds a digest of it), by the C compiler
(`cc`, Debian's gcc and libc6-dev), statically linked: a static program is the cheapest kind
to exec, and it replaces a shell and setpriv in every launch.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings

SOURCE = Path(__file__).with_name("sandbox_exec.c")
CC = "cc"


class BuildFailed(RuntimeError):
    """sandbox-exec could not be built; the message says why and what to do."""


def program() -> str:
    """The path of sandbox-exec for this source, built first if it is not there yet."""
    source = SOURCE.read_bytes()
    directory = settings.DATA_DIR / "bin"
    path = directory / f"sandbox-exec-{hashlib.sha256(source).hexdigest()[:16]}"
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    cc = shutil.which(CC)
    if cc is None:
        raise BuildFailed(
            "no C compiler (cc) to build the sandbox's launcher: `apt-get install gcc libc6-dev`"
        )
    directory.mkdir(mode=0o755, exist_ok=True)
    # Built beside its final name and renamed: workers starting together never run half a file.
    fd, partial = tempfile.mkstemp(prefix=".sandbox-exec-", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, "-O2", "-static", "-o", partial, str(SOURCE)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise BuildFailed(f"building {SOURCE.name} failed: {done.stderr.strip()[-1000:]}")
        os.chmod(partial, 0o755)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return str(path)
