"""Synthetic test frames: rendered codes pasted on noisy cardboard (for tests and bench)."""

from __future__ import annotations

import cv2
import numpy as np
import zxingcpp

from controller.vision import GrayImage

_F = zxingcpp.BarcodeFormat
_FORMATS = {
    "code128": _F.Code128, "code39": _F.Code39, "code93": _F.Code93, "codabar": _F.Codabar,
    "ean13": _F.EAN13, "ean8": _F.EAN8, "upca": _F.UPCA, "upce": _F.UPCE, "itf": _F.ITF,
    "qrcode": _F.QRCode, "datamatrix": _F.DataMatrix,
}


def render(
    text: str, symbology: str = "code128", module_px: int = 2, bar_height: int = 0
) -> GrayImage:
    """A black-on-white code with its quiet zone; linear codes get ``bar_height`` px bars."""
    code = zxingcpp.create_barcode(text, _FORMATS[symbology])
    img = np.asarray(code.to_image(scale=module_px), dtype=np.uint8)
    if bar_height and img.shape[0] < bar_height:
        img = np.ascontiguousarray(np.repeat(img[:1], bar_height, axis=0))
    return img


def cardboard(height: int, width: int, rng: np.random.Generator) -> GrayImage:
    """Brown-gray cardboard texture: smooth blotches plus pixel noise."""
    small = rng.normal(0, 1, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    blotch = np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))
    img = 120 + 12 * blotch + rng.normal(0, 6, (height, width))
    return np.clip(img, 0, 255).astype(np.uint8)


def paste(
    frame: GrayImage,
    code: GrayImage,
    cx: float,
    cy: float,
    angle_deg: float,
    *,
    label_margin: int = 30,
    rng: np.random.Generator | None = None,
) -> GrayImage:
    """Paste ``code`` on a white label centred at (cx, cy), rotated ``angle_deg`` anticlockwise.

    Dark pixels stay dark and the label is lighter than the cardboard; mild pixel noise
    and a 0.6 px blur mimic a camera. Returns a new frame.
    """
    label = np.full(
        (code.shape[0] + 2 * label_margin, code.shape[1] + 2 * label_margin), 235, np.uint8
    )
    label[
        label_margin : label_margin + code.shape[0], label_margin : label_margin + code.shape[1]
    ] = np.where(code < 128, 30, 235).astype(np.uint8)
    h, w = label.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    m[0, 2] += cx - w / 2
    m[1, 2] += cy - h / 2
    size = (frame.shape[1], frame.shape[0])
    warped = cv2.warpAffine(label, m, size, flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpAffine(np.full_like(label, 255), m, size, flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = mask.astype(np.float32) / 255
    out = frame.astype(np.float32) * (1 - alpha) + warped.astype(np.float32) * alpha
    out = np.asarray(cv2.GaussianBlur(out, (0, 0), 0.6), dtype=np.float64)
    if rng is not None:
        out += rng.normal(0, 4, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)
