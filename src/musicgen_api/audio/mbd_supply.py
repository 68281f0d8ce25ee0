"""MultiBand Diffusion as a running server has it: off, loading, ready, or unavailable (and why).

A user who never asked for MBD must not have start-up fail or wait for it: by default (`auto`) weights already on
this machine (a file, or the hub cache) are loaded before serving, and weights still to be downloaded (4.6 GB) are
fetched on a background thread while plain requests are served; if they cannot be had, one warning says how to
enable MBD and the server runs without it. `on` insists (start-up fails without the weights); `off` skips MBD.
"""

import logging
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers import EncodecModel

from musicgen_api.audio.mbd import MultiBandDiffusion, load_mbd
from musicgen_api.audio.mbd_checkpoint import HUB_FILE, MBDLoadError
from musicgen_api.config import MBDMode

log = logging.getLogger(__name__)

MBDState = Literal["off", "loading", "ready", "unavailable"]
Loader = Callable[[str, EncodecModel, torch.device], MultiBandDiffusion]


def is_local(source: str) -> bool:
    """The weights are a file here, or a hub repo whose MBD file is already in the hub cache."""
    if pathlib.Path(source).expanduser().is_file():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(source, HUB_FILE), str)
    except ValueError:  # not a valid repo id: only a path could have been meant
        return False


class MBDSupply:
    def __init__(
        self,
        mode: MBDMode,
        source: str,
        codec: EncodecModel,
        device: torch.device,
        loader: Loader = load_mbd,
    ) -> None:
        self.source = source
        self.model: MultiBandDiffusion | None = None
        self.state: MBDState = "off"
        self.reason: str | None = None
        self._since = time.monotonic()
        self._lock = threading.Lock()
        if mode == "off":
            return
        if mode == "on":
            self.model, self.state = loader(source, codec, device), "ready"  # MBDLoadError stops start-up
            return
        if is_local(source):
            self._load(loader, codec, device)
        else:
            self.state = "loading"
            log.info(
                "fetching the MultiBand Diffusion weights (%s) in the background; plain requests are served", source
            )
            threading.Thread(target=self._load, args=(loader, codec, device), name="mbd-fetch", daemon=True).start()

    def _load(self, loader: Loader, codec: EncodecModel, device: torch.device) -> None:
        try:
            model = loader(self.source, codec, device)
        except (MBDLoadError, OSError, RuntimeError) as exc:
            with self._lock:
                self.state, self.reason = "unavailable", str(exc)
            log.warning(
                "MultiBand Diffusion is unavailable, serving without it (%s). To enable it, make its weights "
                "reachable (--mbd-weights FILE, or a hub cache under HF_HOME that holds them) and restart; --mbd "
                "makes this an error, --no-mbd skips it",
                exc,
            )
            return
        with self._lock:
            self.model, self.state = model, "ready"

    @property
    def loading_seconds(self) -> float:
        return time.monotonic() - self._since

    def describe(self) -> dict[str, Any]:
        """For GET /api/info: the state, and why when it is unavailable."""
        with self._lock:
            described: dict[str, Any] = {"state": self.state}
            if self.state == "unavailable":
                described["reason"] = self.reason
            if self.state == "loading":
                described["loading_seconds"] = round(self.loading_seconds)
            return described
