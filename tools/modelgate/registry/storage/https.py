"""https:// and http:// checkpoint sources (read only: no registry is kept on a web server).

Each read waits at most $MODELGATE_FETCH_TIMEOUT seconds (default 20) for the server's next bytes.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from .base import CHUNK, Write

TIMEOUT_ENV = "MODELGATE_FETCH_TIMEOUT"


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "20"))
    except ValueError:
        return 20.0


def read_source(source: str, write: Write, **_) -> None:
    request = urllib.request.Request(source, headers={"User-Agent": "modelgate-checkpoint-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=_timeout()) as response:
            while chunk := response.read(CHUNK):
                write(chunk)
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise OSError(f"unreachable ({getattr(e.reason, 'strerror', None) or e.reason})") from None
    except TimeoutError:
        raise OSError(f"no answer within {_timeout():g} s") from None
