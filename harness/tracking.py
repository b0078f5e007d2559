"""W&B as a mirror of the local run folder (which stays the source of truth).

The mode is decided BEFORE wandb.init, never by trying online and falling back (an API key with
no network blocks ~100 s, infra.md §5):
  logging.wandb = disabled | offline | online   taken as given (online without credentials is an error)
  logging.wandb = auto   -> the WANDB_MODE environment variable when set (CI sets offline),
                            else online when credentials are configured (WANDB_API_KEY or a netrc
                            entry for the W&B host), else offline.
The logger carries project, group (= sweep), job_type (= axis), tags, name, id (= run_id, so a
resumed run continues the same W&B run) and the resolved config. Lightning's WandbLogger only
touches W&B on global rank 0.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.config import ConfigError, RunConfig


def _has_credentials() -> tuple[bool, str]:
    if os.environ.get("WANDB_API_KEY"):
        return True, "WANDB_API_KEY is set"
    host = (
        urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        or "api.wandb.ai"
    )
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if path.exists() and netrc.netrc(path).authenticators(host):
            return True, f"{path} has an entry for {host}"
    except (netrc.NetrcParseError, OSError):
        pass
    return False, f"no WANDB_API_KEY and no netrc entry for {host}"


def decide_mode(cfg: RunConfig) -> tuple[str, str]:
    """(mode, reason) with mode in online | offline | disabled."""
    want = cfg.logging.wandb
    if want in ("disabled", "offline"):
        return want, "config"
    creds, why = _has_credentials()
    if want == "online":
        if not creds:
            raise ConfigError(
                f"logging.wandb = online but {why}. Run `wandb login`, or set "
                f"logging.wandb to offline/auto."
            )
        return "online", f"config ({why})"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        if env == "online" and not creds:
            return "offline", f"auto: WANDB_MODE=online but {why}"
        return env, f"auto: WANDB_MODE={env}"
    if env == "dryrun":
        return "offline", "auto: WANDB_MODE=dryrun"
    return ("online", f"auto: {why}") if creds else ("offline", f"auto: {why}")


def make_logger(cfg: RunConfig, rid: str, name: str, save_dir: Path, mode: str) -> Any | None:
    """A Lightning WandbLogger in `mode`, or None when disabled."""
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    log = cfg.logging
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        project=log.project,
        entity=log.entity or None,
        name=name,
        id=rid,
        version=rid,
        group=log.group or cfg.sweep,
        job_type=log.job_type or cfg.axis or None,
        tags=list(log.tags),
        config=cfg.to_dict(),
        save_dir=str(save_dir),
        mode=mode,
        log_model=False,
        settings=_settings(),
    )
    # Lightning forwards anonymous=None to wandb.init, and recent wandb warns that this (no-op)
    # setting "has no effect" whatever its value: leave it out so run logs carry no such line.
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def _settings():
    import wandb

    # the console capture thread is of no use to us and slows teardown
    return wandb.Settings(console="off", silent=True)
