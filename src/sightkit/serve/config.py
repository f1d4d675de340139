"""Settings of ``sightkit serve`` (kept apart from the app so that the command line can list
them without importing FastAPI), and the checks that refuse an unsafe server.

The key is never a command-line setting (``ps`` shows every process's arguments to every
user): it comes from ``api_key_file`` or the ``SIGHTKIT_API_KEY`` environment variable.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

#: The environment variable that holds the API key (a key on the command line shows in ``ps``).
API_KEY_ENV = "SIGHTKIT_API_KEY"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ServeConfig:
    """Settings of ``sightkit serve``."""

    weights: str = field(default="", metadata=_help("weights of any task for /v1/predict (sightkit train TASK)"))
    face_weights: str = field(default="", metadata=_help("face embedder weights for /v1/face/* ('' : no face API)"))
    gallery: str = field(default="runs/serve/gallery.db", metadata=_help("SQLite file of the face gallery"))
    face_detector: str = field(
        default="", metadata=_help("'' : face uploads are crops; mtcnn or face_detect weights: find faces")
    )
    person_detector: str = field(
        default="", metadata=_help("pose weights: detection weights that find the people ('' : the whole image)")
    )
    wheel: str = field(default="", metadata=_help("facenet-pytorch wheel with MTCNN's weights ('' : runs/weights/)"))
    host: str = field(
        default="127.0.0.1", metadata=_help("address to listen on (another than loopback needs a key or insecure)")
    )
    port: int = field(default=8000, metadata=_help("TCP port (0: any free port)"))
    max_batch: int = field(default=8, metadata=_help("most images per forward pass (1: no batching)"))
    max_wait_ms: float = field(default=5.0, metadata=_help("longest wait for a batch to fill, from the first arrival"))
    max_queue: int = field(default=256, metadata=_help("most images waiting; beyond, requests get 503"))
    timeout_s: float = field(default=30.0, metadata=_help("a request waiting longer for its answer gets 504"))
    max_upload_mb: float = field(default=16.0, metadata=_help("largest request body in MiB (413 beyond)"))
    max_images: int = field(default=16, metadata=_help("most images in one request"))
    max_pixels: int = field(default=40_000_000, metadata=_help("most pixels in one image (413 beyond)"))
    max_aspect: float = field(
        default=32.0, metadata=_help("longest / shortest side of an image (422 beyond: a 1 x 4000 strip resizes to 0)")
    )
    conf: float = field(default=0.5, metadata=_help("default score threshold of /v1/predict (a query may set it)"))
    top_k: int = field(default=100, metadata=_help("most detections per image"))
    precision: str = field(
        default="fp32",
        metadata=_help("/v1/predict's inference precision: fp32 or bf16 (faster on CPUs with AVX512-BF16/AMX)"),
    )
    face_threshold: float = field(default=0.4, metadata=_help("cosine similarity at which two faces are the same"))
    min_face: float = field(default=0.0, metadata=_help("skip faces smaller than this many pixels (aligned side)"))
    max_yaw: float = field(default=math.inf, metadata=_help("skip faces turned more than this, radians"))
    min_sharpness: float = field(default=0.0, metadata=_help("skip faces whose Laplacian variance is lower"))
    min_score: float = field(default=0.0, metadata=_help("skip faces whose detector score is lower"))
    api_key_file: str = field(
        default="", metadata=_help(f"file holding the key clients send in X-API-Key ('' : ${API_KEY_ENV}, else none)")
    )
    protect_reads: bool = field(
        default=True, metadata=_help("with a key, every /v1 endpoint needs it (false: only enrol and delete)")
    )
    insecure: bool = field(
        default=False, metadata=_help("allow a host other than loopback without a key (anyone may enrol and delete)")
    )
    allowed_hosts: str = field(
        default="", metadata=_help("Host names answered, comma-separated ('' : loopback names on loopback, else any)")
    )
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    threads: int = field(default=0, metadata=_help("torch intra-op threads (0: torch's default)"))
    log_level: str = field(default="info", metadata=_help("uvicorn log level: debug, info, warning, error"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_key(config: ServeConfig) -> str:
    """The key from ``api_key_file`` (its content without the line end), else ``$SIGHTKIT_API_KEY``, else ''."""
    if config.api_key_file:
        path = Path(config.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise FileNotFoundError(f"api_key_file={str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"api_key_file={str(path)!r} cannot be read as text: {error}") from None
        if not key:
            raise ValueError(f"api_key_file={str(path)!r} is empty; write the key in it or leave api_key_file out")
        return key
    return os.environ.get(API_KEY_ENV, "").strip()


def check_config(config: ServeConfig, api_key: str = "") -> None:
    """Raise a ``ValueError`` naming the first setting out of its range, or a server that would
    be open to the network without a key."""
    if not config.weights and not config.face_weights:
        raise ValueError("weights= (a detector) or face_weights= (a face embedder) is required")
    if isinstance(config.port, bool) or not isinstance(config.port, int) or not 0 <= config.port <= 65535:
        raise ValueError(f"port must be a TCP port number in 0..65535, got {config.port!r}")
    if not is_loopback(config.host) and not api_key and not config.insecure:
        raise ValueError(
            f"host={config.host!r} opens the server to the network without a key: anyone who reaches it could "
            f"enrol and delete faces; set a key (api_key_file= or ${API_KEY_ENV}), or give insecure=true"
        )
    for key in ("max_batch", "max_queue", "max_images", "max_pixels", "top_k"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(config, key)}")
    for key in ("max_upload_mb", "timeout_s"):
        if not getattr(config, key) > 0:
            raise ValueError(f"{key} must be > 0, got {getattr(config, key)}")
    if not config.max_aspect >= 1:
        raise ValueError(
            f"max_aspect must be >= 1 (a ratio of the longest to the shortest side), got {config.max_aspect}"
        )
    if config.max_wait_ms < 0:
        raise ValueError(f"max_wait_ms must be >= 0, got {config.max_wait_ms}")
    if not 0 <= config.conf <= 1:
        raise ValueError(f"conf must be in [0, 1], got {config.conf}")
    from sightkit.engine.precision import check_precision  # here: this module stays free of torch

    check_precision(config.precision)


def max_upload_bytes(config: ServeConfig) -> int:
    """``max_upload_mb`` in bytes."""
    return int(config.max_upload_mb * 2**20)
