"""Reading audiocraft's MultiBand Diffusion checkpoint (`mbd_musicgen_32khz.th`) safely, without audiocraft.

The file is a `torch.save`d dict: `sample_rate`, `n_bands`, and per band `i` a dict of `cfg` (an omegaconf
`DictConfig`), `model_state` and `processor_state`. Unpickling it with `weights_only=False` would run whatever code
the file names, so it is loaded with `weights_only=True` and an allow-list of exactly the omegaconf classes its
config is made of. omegaconf itself is not needed: stand-in classes receive the pickled state, which is then turned
into plain dicts.
"""

import collections
import logging
import pathlib
import pickle
import typing
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

HUB_REPO = "facebook/multiband-diffusion"
HUB_FILE = "mbd_musicgen_32khz.th"


class MBDLoadError(RuntimeError):
    """The MultiBand Diffusion weights are missing, unreadable, or a variant this project does not implement."""


class _DictConfig:
    """Receives a pickled omegaconf DictConfig's state."""


class _AnyNode:
    """Receives a pickled omegaconf AnyNode (a leaf value) state."""


class _Metadata:
    """Receives omegaconf's per-node metadata; never read."""


class _ContainerMetadata:
    """Receives omegaconf's per-container metadata; never read."""


SAFE_GLOBALS: list[Any] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_AnyNode, "omegaconf.nodes.AnyNode"),
    (_Metadata, "omegaconf.base.Metadata"),
    (_ContainerMetadata, "omegaconf.base.ContainerMetadata"),
    typing.Any,
    collections.defaultdict,
    dict,
]


def _plain(node: Any) -> Any:
    """omegaconf stand-ins → plain Python values."""
    if isinstance(node, _DictConfig):
        content = node.__dict__.get("_content")
        if not isinstance(content, dict):
            raise MBDLoadError(f"unsupported config node in the MBD checkpoint: {content!r}")
        return {key: _plain(value) for key, value in content.items()}
    if isinstance(node, _AnyNode):
        value = node.__dict__.get("_val")
        if isinstance(value, str) and value.startswith("${"):
            raise MBDLoadError(f"unresolved interpolation {value!r} in the MBD checkpoint's config")
        return value
    return node


@dataclass(frozen=True)
class BandCheckpoint:
    cfg: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    processor_state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class MBDCheckpoint:
    sample_rate: int
    bands: list[BandCheckpoint]


def resolve_weights(source: str) -> pathlib.Path:
    """A local file, or a hub repo id (its `mbd_musicgen_32khz.th`, from the cache or downloaded)."""
    path = pathlib.Path(source).expanduser()
    if path.is_file():
        return path
    if source.startswith(("/", "./", "../", "~")) or source.endswith((".th", ".pt")):
        raise MBDLoadError(f"the MBD weights file '{source}' does not exist; pass --mbd-weights FILE or --no-mbd")
    from huggingface_hub import hf_hub_download

    try:
        return pathlib.Path(hf_hub_download(source, HUB_FILE))
    except Exception as exc:
        raise MBDLoadError(
            f"could not get {HUB_FILE} from '{source}' ({str(exc).strip().splitlines()[0] if str(exc) else exc!r}). "
            "Pass --mbd-weights with a downloaded copy, set HF_HOME to a cache that holds it, or start with --no-mbd"
        ) from exc


def load_checkpoint(source: str) -> MBDCheckpoint:
    path = resolve_weights(source)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MBDLoadError(f"'{path}' is not a readable MultiBand Diffusion checkpoint ({reason})") from exc
    if not isinstance(raw, dict) or not {"sample_rate", "n_bands"} <= raw.keys():
        raise MBDLoadError(f"'{path}' is not a MultiBand Diffusion checkpoint (no sample_rate / n_bands entries)")
    bands = []
    for i in range(int(raw["n_bands"])):
        entry = raw.get(i)
        if not isinstance(entry, dict) or not {"cfg", "model_state", "processor_state"} <= entry.keys():
            raise MBDLoadError(f"'{path}': band {i} is missing or lacks cfg/model_state/processor_state")
        cfg = _plain(entry["cfg"])
        if not isinstance(cfg, dict):
            raise MBDLoadError(f"'{path}': band {i} has no readable config")
        bands.append(BandCheckpoint(cfg, dict(entry["model_state"]), dict(entry["processor_state"])))
    return MBDCheckpoint(sample_rate=int(raw["sample_rate"]), bands=bands)
