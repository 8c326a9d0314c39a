"""The embedded broker: kombu's filesystem transport, with messages published atomically.

kombu's filesystem channel creates a message file under its final name and only then writes
it, so a worker listing the folder in between takes an empty file: it fails to decode it and
the message is lost. Here a message is written under a name consumers ignore, fsynced, then
renamed into place, so a consumer sees all of a message or nothing (rename is atomic within
a filesystem). Taking a message is a rename too, into the processed folder beside the queue
under DATA_DIR: on one filesystem only one rename of a file can succeed, so two workers never
both get a message. (kombu's own `_get` moves it to the system's temp folder, which
`shutil.move` does by copy and delete when that is another filesystem: two workers could both
copy one message before either deletes it.)
"""

import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

from reapi import atomic_files

# How long a worker told to stop may still wait for a message before it notices.
SHUTDOWN_CHECK_SECONDS = 0.1


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = self.data_folder_out
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # Consumers match `<stamp>_<uuid>.<queue>.msg`; a leading dot never matches.
        tmp = Path(folder, f".{uuid.uuid4().hex}.partial")
        try:
            atomic_files.publish(
                tmp, [dumps(payload).encode()], lambda t: os.rename(t, os.path.join(folder, name))
            )
        except OSError as exc:
            raise filesystem.ChannelError(f"cannot add message to {folder}: {exc}") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.processed_folder, filename)
            try:
                os.rename(os.path.join(self.data_folder_in, filename), taken)
            except FileNotFoundError:
                continue  # another worker took it first
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
            finally:
                os.unlink(taken)
            return loads(payload)
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        """Wait up to `timeout` for a message, in slices: Celery's consumer loop waits here 2 s
        at a time and only then looks whether it was told to stop (SIGTERM), so each stop of
        an idle worker took 2 s longer than it needed. Between slices the shutdown is seen."""
        from celery.worker import state  # the worker's own flags, set by its signal handlers

        deadline = None if timeout is None else monotonic() + timeout
        while True:
            remaining = SHUTDOWN_CHECK_SECONDS if deadline is None else deadline - monotonic()
            try:
                super().drain_events(connection, timeout=max(min(remaining, SHUTDOWN_CHECK_SECONDS), 0.001))
                return
            except TimeoutError:
                if _told(state.should_stop) or _told(state.should_terminate):
                    raise
                if deadline is not None and monotonic() >= deadline:
                    raise


def _told(flag: object) -> bool:
    """As celery.worker.state.maybe_shutdown reads its flags: set to an exit code, 0 included
    (which `in (None, False)` would take for False)."""
    return flag is not None and flag is not False
