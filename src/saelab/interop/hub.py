"""Fail fast, with a fix, when a Hub resource is needed and the Hub cannot be reached."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from saelab.errors import SaelabError


class HubUnavailable(SaelabError, RuntimeError):
    """The Hugging Face Hub is unreachable and the params ask for something on it."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def require_hub(resource: str, what: str, fix: str, timeout: float = 5.0) -> None:
    """Raise :class:`HubUnavailable` unless ``<endpoint>/api/<resource>`` answers.

    Runs before any heavy work. ``HF_HUB_OFFLINE=1`` counts as unreachable.
    """
    url = f"{hub_endpoint()}/api/{resource}"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        reason = "HF_HUB_OFFLINE=1 is set"
    else:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            return
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code not in (401, 403, 404):
                return
            reason = f"HTTP {err.code} from {url}"
        except (urllib.error.URLError, OSError) as err:
            reason = f"cannot reach {url}: {getattr(err, 'reason', err)}"
    raise HubUnavailable(f"{what} needs the Hugging Face Hub, but {reason}. To fix: {fix}.")
