"""The JSON bodies of the HTTP API, as pydantic models: FastAPI validates every answer against
them and publishes them in the OpenAPI schema (``GET /openapi.json``, pages at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong and what was expected, for people")
    error: str = Field(description="a stable code for programs, e.g. unsupported_type, too_large, timeout")


class ClassMask(BaseModel):
    label: int
    name: str
    size: list[int] = Field(description="[H, W]")
    counts: str = Field(description="COCO's compressed RLE (pycocotools.mask.decode reads it)")


class MaskPng(BaseModel):
    format: str = Field(description="png")
    data: str = Field(description="base64 PNG whose pixel values are the class indices (16-bit past 256 classes)")
    names: list[str] = Field(description="class name of each index")


class PredictResult(BaseModel):
    """One image's answer: ``Results.to_dict()`` of the task's predictor, with the upload's name
    and size; the fields the task does not produce are left out."""

    image: str = Field(description="the upload's file name")
    width: int
    height: int
    boxes: list[list[float]] | None = Field(None, description="[[x1, y1, x2, y2], ...] in pixels of the upload")
    scores: list[float] | None = Field(None, description="one per instance, rounded to 4 decimals")
    labels: list[int] | None = Field(None, description="class index of each instance")
    names: list[str] | None = Field(None, description="class name of each instance")
    keypoints: list[list[list[float]]] | None = Field(None, description="pose: [[[x, y, score], ...K], ...N]")
    landmarks: list[list[list[float]]] | None = Field(None, description="faces: [[[x, y], ...5], ...N]")
    head_pose: list[list[float | None]] | None = Field(
        None, description="face_detect: [[yaw, pitch, roll], ...N] radians from the landmarks (null: unmeasurable)"
    )
    embeddings: list[list[float]] | None = Field(None, description="face embedder: [N, D], unit length")
    masks: list[ClassMask] | None = Field(None, description="segmenter (mask_format=rle): one RLE per class present")
    mask: MaskPng | None = Field(None, description="segmenter (mask_format=png): the class map")
    classes: dict[str, float] | None = Field(None, description="segmenter: class name -> share of the pixels")


class PredictResponse(BaseModel):
    task: str = Field(description="detect, segment, pose, face_detect or face")
    model: str
    results: list[PredictResult] = Field(description="one per uploaded image, in upload order")


class BatchingInfo(BaseModel):
    max_batch: int
    max_wait_ms: float
    max_queue: int


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_images: int
    max_pixels: int
    max_aspect: float
    timeout_s: float


class FaceInfo(BaseModel):
    model: str
    imgsz: int
    embedding: int
    weights_sha256: str
    threshold: float
    detector: str | None = Field(description="the face detector (null: uploads are face crops)")
    identities: int
    api_key_required: bool


class ModelInfo(BaseModel):
    task: str | None = Field(description="the task of /v1/predict's model, or null when only face endpoints are served")
    model: str | None = None
    classes: list[str] = []
    category_ids: list[int] = []
    imgsz: int | None = None
    max_size: int | None = None
    weights_sha256: str | None = None
    options: list[str] = Field([], description="the predictor's options (conf, top_k, ...)")
    device: str
    precision: str = Field("fp32", description="/v1/predict's inference precision: fp32 or bf16")
    conf: float
    top_k: int
    batching: BatchingInfo
    limits: LimitsInfo
    face: FaceInfo | None = Field(description="the face embedder and gallery, when served")


class Health(BaseModel):
    status: str


class SkippedFace(BaseModel):
    image: str = Field(description="the upload's file name")
    reasons: list[str] = Field(description="the quality thresholds the face fails, e.g. 'face 18 px < min_face=32'")


class EnrollResponse(BaseModel):
    name: str
    added: int = Field(description="embeddings added by this request")
    total: int = Field(description="embeddings the identity has now")
    skipped: list[SkippedFace] = Field(description="faces below the server's quality thresholds, not enrolled")


class FaceQualityRecord(BaseModel):
    size: float = Field(description="side of the aligned face in source pixels")
    yaw: float | None = Field(description="head pose from the landmarks, radians (null: unmeasurable)")
    pitch: float | None
    roll: float | None
    sharpness: float | None = Field(description="variance of the Laplacian of the aligned crop")
    score: float | None = Field(description="the detector's score (null without a detector)")


class Match(BaseModel):
    name: str
    score: float = Field(description="cosine similarity with the person's template (or best face), in [-1, 1]")


class FaceMatches(BaseModel):
    box: list[float] | None = Field(
        min_length=4, max_length=4, description="xyxy pixels: the detector's box, the whole image for a crop"
    )
    landmarks: list[list[float]] | None = Field(description="five [x, y] points that aligned the face, if any")
    detection_score: float | None = Field(description="the detector's score (null without a detector)")
    quality: FaceQualityRecord | None = Field(description="size, head pose, sharpness and score of the face")
    skipped: list[str] = Field(description="why the face is below the quality thresholds ([] : it was identified)")
    identity: str | None = Field(description="the best match when its score is above the threshold, else null")
    matches: list[Match] = Field(description="best first")


class IdentifyResult(BaseModel):
    image: str
    width: int
    height: int
    faces: list[FaceMatches] = Field(description="every face found, by decreasing detection score; [] if none")


class IdentifyResponse(BaseModel):
    threshold: float
    results: list[IdentifyResult]


class VerifyResponse(BaseModel):
    score: float = Field(description="cosine similarity of the two faces (or with the person's template or best face)")
    same: bool = Field(description="score > threshold")
    threshold: float
    against: str = Field(description="the second image's file name, or the enrolled name")


class DeleteResponse(BaseModel):
    name: str
    removed: int


class GalleryResponse(BaseModel):
    identities: dict[str, int] = Field(description="name -> number of enrolled embeddings")
