"""W&B's mode, decided before anything starts and without importing wandb or torch: ``auto`` is
online only with an API key and a reachable server; an explicit ``online`` without either is one
line that says how to run offline, in seconds rather than after W&B's own retries."""

from __future__ import annotations

import os
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from zflight.config import ConfigError

CONNECT_TIMEOUT_S = 3.0
OFFLINE_HINT = (
    "run offline with logger.mode=offline (or WANDB_MODE=offline) and upload later with "
    "`wandb sync <run_dir>/wandb/offline-run-*`"
)


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(errors="ignore") or _host() in netrc.read_text(
            errors="ignore"
        )
    except OSError:
        return False


def _host() -> str:
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return urlparse(url).hostname or "api.wandb.ai"


def reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the W&B server's health check (``/healthz``) answers OK within ``timeout``; a
    proxy or captive portal that answers in its place (an error status) does not count. The
    request runs on a thread so that a name lookup with no network cannot hold it longer."""
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    answer: list[bool] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=timeout) as reply:
                answer.append(200 <= reply.status < 300)
        except (OSError, ValueError):  # HTTPError (an error status) is an OSError too
            answer.append(False)

    thread = threading.Thread(target=ask, name="zflight-wandb-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def wandb_mode(requested: str) -> str:
    """``auto`` -> online only with an API key and a reachable server; never prompts."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() and reachable(2.0) else "offline"


def check_wandb(cfg: DictConfig) -> None:
    """ConfigError when W&B is asked to run online and cannot: no API key, or no network."""
    if cfg.logger.name != "wandb":
        return
    mode = cfg.logger.mode if cfg.logger.mode != "auto" else os.environ.get("WANDB_MODE", "auto")
    if mode != "online":
        return
    how = "logger.mode=online" if cfg.logger.mode == "online" else "WANDB_MODE=online"
    key = os.environ.get("WANDB_API_KEY", "")
    if key and len(key.strip().split("-")[-1]) < 40:
        raise ConfigError(
            f"{how}: WANDB_API_KEY is not a W&B API key (those have 40 or more characters); "
            f"{OFFLINE_HINT}"
        )
    if not has_api_key():
        raise ConfigError(
            f"{how} needs a W&B API key and none is set (WANDB_API_KEY or `wandb login`); "
            f"{OFFLINE_HINT}"
        )
    if not reachable():
        raise ConfigError(
            f"{how}: cannot reach {_host()} within {CONNECT_TIMEOUT_S:.0f} s (no network?); "
            f"{OFFLINE_HINT}"
        )
