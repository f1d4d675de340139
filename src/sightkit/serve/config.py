"""Settings of ``sightkit serve`` (kept apart from the app so that the command line can list
them without importing FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ServeConfig:
    """Settings of ``sightkit serve``."""

    weights: str = field(default="", metadata=_help("detector or segmenter weights (sightkit train detect|segment)"))
    face_weights: str = field(default="", metadata=_help("face embedder weights for /v1/face/* ('' : no face API)"))
    gallery: str = field(default="runs/serve/gallery.db", metadata=_help("SQLite file of the face gallery"))
    host: str = field(default="127.0.0.1", metadata=_help("address to listen on (0.0.0.0: every interface)"))
    port: int = field(default=8000, metadata=_help("TCP port"))
    max_batch: int = field(default=8, metadata=_help("most images per forward pass (1: no batching)"))
    max_wait_ms: float = field(default=5.0, metadata=_help("longest wait for a batch to fill, from the first arrival"))
    max_queue: int = field(default=256, metadata=_help("most images waiting; beyond, requests get 503"))
    timeout_s: float = field(default=30.0, metadata=_help("a request waiting longer for its answer gets 504"))
    max_upload_mb: float = field(default=16.0, metadata=_help("largest request body in MiB (413 beyond)"))
    max_images: int = field(default=16, metadata=_help("most images in one request"))
    max_pixels: int = field(default=40_000_000, metadata=_help("most pixels in one image (413 beyond)"))
    conf: float = field(default=0.5, metadata=_help("default score threshold of /v1/predict (a query may set it)"))
    top_k: int = field(default=100, metadata=_help("most detections per image"))
    face_threshold: float = field(default=0.4, metadata=_help("cosine similarity at which two faces are the same"))
    api_key: str = field(
        default="", metadata=_help("key for enrol/delete in header X-API-Key ('' : $SIGHTKIT_API_KEY, else none)")
    )
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    threads: int = field(default=0, metadata=_help("torch intra-op threads (0: torch's default)"))
    log_level: str = field(default="info", metadata=_help("uvicorn log level: debug, info, warning, error"))


def check_config(config: ServeConfig) -> None:
    """Raise a ``ValueError`` naming the first setting out of its range."""
    if not config.weights and not config.face_weights:
        raise ValueError("weights= (a detector) or face_weights= (a face embedder) is required")
    for key in ("max_batch", "max_queue", "max_images", "max_pixels", "top_k"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(config, key)}")
    for key in ("max_upload_mb", "timeout_s"):
        if not getattr(config, key) > 0:
            raise ValueError(f"{key} must be > 0, got {getattr(config, key)}")
    if config.max_wait_ms < 0:
        raise ValueError(f"max_wait_ms must be >= 0, got {config.max_wait_ms}")
    if not 0 <= config.conf <= 1:
        raise ValueError(f"conf must be in [0, 1], got {config.conf}")


def max_upload_bytes(config: ServeConfig) -> int:
    """``max_upload_mb`` in bytes."""
    return int(config.max_upload_mb * 2**20)
