"""Page tokens: opaque to the client, a kind and a position to the server.

A token names what it pages through (`kind`), so one issued by another listing is refused
rather than read as a position of this one.
"""

import base64

from reapi.errors import InvalidArgument


def encode(kind: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode()


def decode(kind: str, token: str) -> int:
    try:
        found, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if found == kind and number.isdigit():
            return int(number)
    except ValueError:
        pass
    raise InvalidArgument(f"page_token {token[:40]!r} was not issued by this server")
