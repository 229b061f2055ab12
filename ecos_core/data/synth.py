"""SynthDigits-style domain: digits rendered with the TrueType fonts matplotlib ships.

Random font, size, rotation, position jitter, colours with a guaranteed luminance gap,
partial neighbour digits (like house-number crops), light blur and noise.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGE_SIZE = 28
SYNTH_SEED = 20_240_604  # fixed: part of the domain definition, not a user knob
LETTERS_SEED = 20_240_605
LETTERS = "ACEFHKMNPR"

# matplotlib's bundled fonts whose digit glyphs are ordinary lining digits (checked by
# rendering). Symbol fonts (cmsy10, cmex10, STIXSiz*, STIXNonUni*), the empty
# DejaVu*Display fonts, LastResort and cmmi10's old-style figures are excluded.
SYNTH_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)




def _font_dir() -> Path:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("matplotlib is not installed: its fonts render the synth domain")
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


@functools.lru_cache(maxsize=4096)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _digit_fonts() -> list[tuple[str, float]]:
    """Usable digit fonts as (path, digit height / font size).

    Each font must draw ten non-empty, mutually different digit glyphs, which guards
    against a matplotlib release swapping a font for a symbol-only one.
    """
    usable = []
    for name in SYNTH_FONTS:
        path = _font_dir() / name
        if not path.is_file():
            continue
        font = _font(str(path), 40)
        glyphs = []
        for d in "0123456789":
            canvas = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(canvas).text((8, 4), d, font=font, fill=255)
            glyphs.append(np.asarray(canvas) > 127)
        distinct = len({g.tobytes() for g in glyphs}) == 10
        if distinct and all(g.sum() > 20 for g in glyphs):
            top, bottom = font.getbbox("0123456789")[1::2]
            usable.append((str(path), (bottom - top) / 40.0))
    if not usable:
        raise FileNotFoundError(f"{_font_dir()}: no usable digit fonts among {SYNTH_FONTS}")
    return usable


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _render_glyph(rng: np.random.Generator, glyph: str, alphabet: str, fonts: list[tuple[str, float]]) -> np.ndarray:
    """One SVHN-like crop: the labelled glyph fills most of the frame, neighbours from
    the same alphabet peek in."""
    hi = IMAGE_SIZE * 2  # draw at 2x and downsample for antialiased strokes
    path, ratio = fonts[rng.integers(len(fonts))]
    height = rng.uniform(0.62, 0.86) * hi  # glyph height as a share of the frame
    font = _font(path, max(8, int(round(height / ratio))))

    mask = Image.new("L", (hi, hi), 0)
    draw = ImageDraw.Draw(mask)
    cx = hi / 2 + rng.uniform(-0.06, 0.06) * hi
    cy = hi / 2 + rng.uniform(-0.05, 0.05) * hi
    left, top, right, bottom = font.getbbox(glyph)
    x0, y0 = cx - (left + right) / 2, cy - (top + bottom) / 2
    draw.text((x0, y0), glyph, font=font, fill=255)
    # Partial neighbouring digits, as in house-number crops.
    gap = rng.uniform(0.04, 0.16) * height
    if rng.random() < 0.5:
        d = alphabet[rng.integers(len(alphabet))]
        l2, _, r2, _ = font.getbbox(d)
        draw.text((x0 + left - gap - r2, y0), d, font=font, fill=255)
    if rng.random() < 0.5:
        d = alphabet[rng.integers(len(alphabet))]
        l2, _, _, _ = font.getbbox(d)
        draw.text((x0 + right + gap - l2, y0), d, font=font, fill=255)
    mask = mask.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, center=(cx, cy))
    alpha = np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), np.float32)[..., None] / 255.0

    # Colours with a guaranteed luminance gap so the digit stays readable.
    bg = rng.integers(0, 256, 3).astype(np.float32)
    fg = rng.integers(0, 256, 3).astype(np.float32)
    while abs(_luma(fg) - _luma(bg)) < 90:
        fg = rng.integers(0, 256, 3).astype(np.float32)
    # Gentle linear shading across the background.
    theta = rng.uniform(0, 2 * np.pi)
    grid = np.linspace(-1, 1, IMAGE_SIZE, dtype=np.float32)
    ramp = np.cos(theta) * grid[None, :] + np.sin(theta) * grid[:, None]
    background = bg + ramp[..., None] * rng.uniform(-25, 25, 3).astype(np.float32)
    img = background * (1 - alpha) + fg * alpha

    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.7)))
    noisy = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(0, 6), (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_glyphs(n: int, alphabet: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render n crops of the glyphs in `alphabet` (uint8 (n, 28, 28, 3)); label i is
    alphabet[i], balanced."""
    fonts = _digit_fonts()
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(alphabet)).astype(np.int64)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = _render_glyph(rng, alphabet[label], alphabet, fonts)
    return images, labels


def render_synth_digits(n: int, seed: int = SYNTH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """SynthDigits-style samples, labels 0-9 balanced."""
    return render_glyphs(n, "0123456789", seed)


def render_letters(n: int, seed: int = LETTERS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """An off-task distractor drawn exactly like the synth digits: ten letters that no
    font draws like a digit (no B, G, I, O, Q, S, Z), labels 0-9 = LETTERS' positions."""
    return render_glyphs(n, LETTERS, seed)
