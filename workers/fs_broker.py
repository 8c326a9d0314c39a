"""The embedded broker: kombu's filesystem transport, with messages published atomically.

kombu's filesystem channel creates a message file under its final name and only then writes
it, so a worker listing the folder in between takes an empty file: it fails to decode it and
the message is lost. Here a message is written under a name consumers ignore, fsynced, then
renamed into place, so a consumer sees all of a message or nothing (rename is atomic within
a filesystem, and taking a message is a rename too, so two workers never both get one).
"""

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = self.data_folder_out
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # Consumers match `<stamp>_<uuid>.<queue>.msg`; a leading dot never matches.
        tmp = os.path.join(folder, f".{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(dumps(payload).encode())
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, os.path.join(folder, name))
        except OSError as exc:
            raise filesystem.ChannelError(f"cannot add message to {folder}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class Transport(filesystem.Transport):
    Channel = Channel
