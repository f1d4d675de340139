"""The JSON bodies of the HTTP API, as pydantic models: FastAPI validates every answer against
them and publishes them in the OpenAPI schema (``GET /openapi.json``, pages at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong and what was expected, for people")
    error: str = Field(description="a stable code for programs, e.g. unsupported_type, too_large, timeout")


class Detection(BaseModel):
    label: str = Field(description="class name")
    category_id: int = Field(description="the class's id in the training annotations")
    score: float = Field(description="class probability, rounded to 4 decimals")
    box: list[float] = Field(min_length=4, max_length=4, description="xyxy in pixels of the uploaded image")


class DetectionResult(BaseModel):
    image: str = Field(description="the upload's file name")
    width: int
    height: int
    detections: list[Detection] = Field(description="best first, scoring at least conf")


class SegmentationResult(BaseModel):
    image: str = Field(description="the upload's file name")
    width: int
    height: int
    classes: dict[str, float] = Field(description="class name -> fraction of the image's pixels, rounded to 4 decimals")


class PredictResponse(BaseModel):
    task: str = Field(description="detect or segment")
    model: str
    results: list[DetectionResult | SegmentationResult] = Field(description="one per uploaded image, in upload order")


class BatchingInfo(BaseModel):
    max_batch: int
    max_wait_ms: float
    max_queue: int


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_images: int
    max_pixels: int
    timeout_s: float


class FaceInfo(BaseModel):
    model: str
    imgsz: int
    embedding: int
    weights_sha256: str
    threshold: float
    identities: int
    api_key_required: bool


class ModelInfo(BaseModel):
    task: str | None = Field(description="detect, or null when only face endpoints are served")
    model: str | None = None
    classes: list[str] = []
    category_ids: list[int] = []
    imgsz: int | None = None
    max_size: int | None = None
    weights_sha256: str | None = None
    device: str
    conf: float
    top_k: int
    batching: BatchingInfo
    limits: LimitsInfo
    face: FaceInfo | None = Field(description="the face embedder and gallery, when served")


class Health(BaseModel):
    status: str


class EnrollResponse(BaseModel):
    name: str
    added: int = Field(description="embeddings added by this request")
    total: int = Field(description="embeddings the identity has now")


class Match(BaseModel):
    name: str
    score: float = Field(description="cosine similarity with the person's best enrolled face, in [-1, 1]")


class IdentifyResult(BaseModel):
    image: str
    identity: str | None = Field(description="the best match when its score is above the threshold, else null")
    matches: list[Match] = Field(description="best first")


class IdentifyResponse(BaseModel):
    threshold: float
    results: list[IdentifyResult]


class VerifyResponse(BaseModel):
    score: float = Field(description="cosine similarity of the two faces (or with the person's best enrolled face)")
    same: bool = Field(description="score > threshold")
    threshold: float
    against: str = Field(description="the second image's file name, or the enrolled name")


class DeleteResponse(BaseModel):
    name: str
    removed: int


class GalleryResponse(BaseModel):
    identities: dict[str, int] = Field(description="name -> number of enrolled embeddings")
