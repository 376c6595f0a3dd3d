"""A synthetic PAS-like kidney slide with known structures, for the demo and for tests.

The slide is a tiled pyramidal generic TIFF written by ``ml.pyramid_tiff``, so OpenSlide
opens it and reports its mpp. It shows a pink tissue section on white glass with
ring-shaped tubules and larger glomeruli at positions that are returned as level-0
polygons. Optionally a disc of the section is scarred: its tubules are small atrophic
ones with thick walls on pale interstitium, and some glomeruli are solid sclerotic tufts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry import Point, Polygon

from ml.errors import SettingsError
from ml.pyramid_tiff import write_pyramidal_tiff

logger = logging.getLogger(__name__)

GLASS_RGB = (242, 240, 246)
INTERSTITIUM_RGB = (228, 178, 212)
TUBULE_WALL_RGB = (196, 96, 160)
LUMEN_RGB = (246, 230, 241)
GLOMERULUS_TUFT_RGB = (172, 80, 148)
BOWMAN_SPACE_RGB = (240, 222, 234)
NUCLEUS_RGB = (92, 52, 132)
# Structure sizes in µm, roughly those of human renal cortex.
TUBULE_RADIUS_UM = (18.0, 30.0)
TUBULE_WALL_UM = 8.0
GLOMERULUS_RADIUS_UM = (80.0, 100.0)
BOWMAN_SPACE_UM = 8.0
NUCLEUS_RADIUS_UM = 2.5
GAP_UM = 6.0
GLOMERULUS_COUNT = 6
TUBULE_COUNT = 260
# Inside the scarred disc: atrophic tubules, fibrotic interstitium, sclerotic glomeruli.
ATROPHIC_TUBULE_RADIUS_UM = (10.0, 16.0)
ATROPHIC_WALL_UM = 6.0
FIBROSIS_RGB = (222, 204, 226)
SCLEROTIC_TUFT_RGB = (206, 150, 196)


@dataclass(frozen=True)
class SampleObject:
    """One drawn structure.

    Attributes:
        label: "tubule", "atrophic tubule", "glomerulus" or "sclerotic glomerulus".
        center_level0: (x, y) centre in level-0 pixels.
        radius_level0: Outer radius in level-0 pixels (tubule wall, or Bowman's capsule).
        polygon_level0: The outer outline as a 64-gon in level-0 pixels, which includes the
            tubule lumen and the glomerulus's Bowman's space.
    """

    label: str
    center_level0: tuple[float, float]
    radius_level0: float
    polygon_level0: Polygon


@dataclass(frozen=True)
class SampleTruth:
    """Ground truth of a slide written by :func:`write_sample_slide`.

    Attributes:
        path: The written TIFF.
        mpp: Level-0 pixel size in µm/px.
        width_px: Level-0 width.
        height_px: Level-0 height.
        level_count: Number of pyramid levels.
        tissue_level0: The tissue section outline in level-0 pixels.
        objects: Tubules and glomeruli, all inside the tissue and not touching each other.
        scar_level0: The scarred disc (empty without one); tubules centred in it are
            atrophic.
    """

    path: Path
    mpp: float
    width_px: int
    height_px: int
    level_count: int
    tissue_level0: Polygon
    objects: tuple[SampleObject, ...]
    scar_level0: Polygon = Polygon()

    def objects_labelled(self, label: str) -> tuple[SampleObject, ...]:
        """Return the objects with one label, e.g. "tubule" or "glomerulus"."""
        return tuple(obj for obj in self.objects if obj.label == label)


def write_sample_slide(
    path: str | Path,
    mpp: float = 0.5,
    size_level0: tuple[int, int] = (6144, 4608),
    seed: int = 0,
    scar_fraction: float = 0.0,
    sclerotic_glomeruli: int = 0,
) -> SampleTruth:
    """Write the sample slide and return what it shows.

    Args:
        path: Output TIFF path. An existing file is replaced.
        mpp: Level-0 pixel size in µm/px, 0.05..20. Structures keep their size in µm.
        size_level0: (width, height) of level 0 in pixels, each at least 512.
        seed: Seed of the random layout. The same arguments give the same file content.
        scar_fraction: Area of the scarred disc as a share of the tissue area, 0..0.8.
            With 0 the slide is the same as before this option existed.
        sclerotic_glomeruli: How many glomeruli are drawn sclerotic, at most
            ``GLOMERULUS_COUNT``.

    Raises:
        SettingsError: mpp, size_level0 or a scar setting is outside the allowed range.
    """
    if not (isinstance(mpp, (int, float)) and 0.05 <= mpp <= 20):
        raise SettingsError(f"Sample slide mpp must be within 0.05..20 µm/px, got {mpp!r}.")
    width_px, height_px = size_level0
    if int(width_px) != width_px or int(height_px) != height_px or min(size_level0) < 512:
        raise SettingsError(
            f"Sample slide size_level0 must be whole (width, height) pixels of at least 512, "
            f"got {size_level0!r}."
        )
    if not (isinstance(scar_fraction, (int, float)) and 0.0 <= scar_fraction <= 0.8):
        raise SettingsError(f"scar_fraction must be within 0..0.8, got {scar_fraction!r}.")
    if not (isinstance(sclerotic_glomeruli, int) and 0 <= sclerotic_glomeruli <= GLOMERULUS_COUNT):
        raise SettingsError(
            f"sclerotic_glomeruli must be a whole number within 0..{GLOMERULUS_COUNT}, got "
            f"{sclerotic_glomeruli!r}."
        )
    width_px, height_px = int(width_px), int(height_px)
    path = Path(path)
    rng = np.random.default_rng(seed)

    tissue_level0 = _tissue_outline(width_px, height_px, rng)
    # The scar has its own random stream, so slides without one keep their old layout.
    scar_level0 = _scar_disc(tissue_level0, scar_fraction, np.random.default_rng([seed, 1]))
    objects = _place_objects(tissue_level0, mpp, rng, scar_level0, sclerotic_glomeruli)
    image = _render(width_px, height_px, tissue_level0, objects, mpp, rng, scar_level0)
    level_count = write_pyramidal_tiff(path, image, mpp)
    logger.info(
        "Wrote sample slide %s: %dx%d px at %.3g µm/px, %d levels, %d objects",
        path, width_px, height_px, mpp, level_count, len(objects),
    )
    return SampleTruth(
        path=path,
        mpp=float(mpp),
        width_px=width_px,
        height_px=height_px,
        level_count=level_count,
        tissue_level0=tissue_level0,
        objects=tuple(objects),
        scar_level0=scar_level0,
    )


def _tissue_outline(width_px: int, height_px: int, rng: np.random.Generator) -> Polygon:
    """Return a lobed ellipse centred on the slide, covering roughly half its area."""
    angles = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=2)
    wobble = 1.0 + 0.07 * np.sin(3 * angles + phases[0]) + 0.04 * np.sin(5 * angles + phases[1])
    xs = width_px / 2 + 0.40 * width_px * wobble * np.cos(angles)
    ys = height_px / 2 + 0.38 * height_px * wobble * np.sin(angles)
    return Polygon(np.column_stack([xs, ys]))


def _scar_disc(tissue_level0: Polygon, scar_fraction: float, rng: np.random.Generator) -> Polygon:
    """Return a disc of ``scar_fraction`` of the tissue area, inside the tissue, or an empty one."""
    if scar_fraction == 0:
        return Polygon()
    radius_px = math.sqrt(scar_fraction * tissue_level0.area / math.pi)
    inner = tissue_level0.buffer(-radius_px)
    if inner.is_empty:
        return tissue_level0.intersection(tissue_level0.centroid.buffer(radius_px, quad_segs=32))
    min_x, min_y, max_x, max_y = inner.bounds
    for _ in range(1000):
        centre = Point(rng.uniform(min_x, max_x), rng.uniform(min_y, max_y))
        if inner.contains(centre):
            return centre.buffer(radius_px, quad_segs=32)
    return inner.representative_point().buffer(radius_px, quad_segs=32)


def _place_objects(
    tissue_level0: Polygon,
    mpp: float,
    rng: np.random.Generator,
    scar_level0: Polygon,
    sclerotic_glomeruli: int,
) -> list[SampleObject]:
    """Place glomeruli, then tubules, at random inside the tissue without overlaps.

    A tubule centred in the scar is atrophic: its radius drawn from the normal range is
    mapped onto the atrophic range, so the random stream is the same as without a scar.
    """
    gap_px = GAP_UM / mpp
    min_x, min_y, max_x, max_y = tissue_level0.bounds
    centres, radii, objects = [], [], []
    plan = [("glomerulus", GLOMERULUS_RADIUS_UM, GLOMERULUS_COUNT),
            ("tubule", TUBULE_RADIUS_UM, TUBULE_COUNT)]
    for label, (radius_min_um, radius_max_um), count in plan:
        placed = 0
        for _ in range(count * 40):
            if placed == count:
                break
            radius_um = rng.uniform(radius_min_um, radius_max_um)
            x, y = rng.uniform(min_x, max_x), rng.uniform(min_y, max_y)
            object_label = label
            if label == "tubule" and not scar_level0.is_empty and scar_level0.contains(Point(x, y)):
                object_label = "atrophic tubule"
                share = (radius_um - radius_min_um) / (radius_max_um - radius_min_um)
                low_um, high_um = ATROPHIC_TUBULE_RADIUS_UM
                radius_um = low_um + share * (high_um - low_um)
            elif label == "glomerulus" and placed < sclerotic_glomeruli:
                object_label = "sclerotic glomerulus"
            radius_px = radius_um / mpp
            outline = Point(x, y).buffer(radius_px, quad_segs=16)
            if not tissue_level0.contains(outline.buffer(gap_px)):
                continue
            if centres:
                distances = np.hypot(*(np.asarray(centres) - (x, y)).T)
                if np.any(distances < np.asarray(radii) + radius_px + gap_px):
                    continue
            centres.append((x, y))
            radii.append(radius_px)
            objects.append(
                SampleObject(object_label, (float(x), float(y)), float(radius_px), outline)
            )
            placed += 1
    return objects


def _render(
    width_px: int,
    height_px: int,
    tissue_level0: Polygon,
    objects: list[SampleObject],
    mpp: float,
    rng: np.random.Generator,
    scar_level0: Polygon,
) -> np.ndarray:
    """Draw the (H, W, 3) uint8 RGB level-0 image."""
    image = np.empty((height_px, width_px, 3), dtype=np.uint8)
    image[:] = GLASS_RGB
    # cv2 draws with 4 fractional bits, so shapes keep sub-pixel precision. Its pixel i is
    # centred on i, where pixel j here spans j..j+1, hence the half-pixel shift.
    shift = 4
    scale = 1 << shift
    outline = np.round((np.asarray(tissue_level0.exterior.coords) - 0.5) * scale)
    cv2.fillPoly(image, [outline.astype(np.int32)], INTERSTITIUM_RGB, cv2.LINE_8, shift)
    if not scar_level0.is_empty:
        scar = scar_level0.intersection(tissue_level0)
        for part in getattr(scar, "geoms", [scar]):
            scar_outline = np.round((np.asarray(part.exterior.coords) - 0.5) * scale)
            cv2.fillPoly(image, [scar_outline.astype(np.int32)], FIBROSIS_RGB, cv2.LINE_8, shift)
    nucleus_px = max(1, round(NUCLEUS_RADIUS_UM / mpp))

    def circle(x: float, y: float, radius: float, rgb: tuple[int, int, int]) -> None:
        centre = (round(x * scale - scale / 2), round(y * scale - scale / 2))
        cv2.circle(image, centre, round(radius * scale), rgb, -1, cv2.LINE_AA, shift)

    for obj in objects:
        x, y = obj.center_level0
        radius = obj.radius_level0
        if obj.label == "glomerulus":
            circle(x, y, radius, BOWMAN_SPACE_RGB)
            tuft_radius = radius - BOWMAN_SPACE_UM / mpp
            circle(x, y, tuft_radius, GLOMERULUS_TUFT_RGB)
            nucleus_radii = tuft_radius * np.sqrt(rng.uniform(0, 1, 120))
        elif obj.label == "sclerotic glomerulus":
            # A solid hyaline tuft that fills the capsule, with few nuclei left.
            circle(x, y, radius, SCLEROTIC_TUFT_RGB)
            nucleus_radii = radius * np.sqrt(rng.uniform(0, 1, 12))
        else:
            wall_um = ATROPHIC_WALL_UM if obj.label == "atrophic tubule" else TUBULE_WALL_UM
            circle(x, y, radius, TUBULE_WALL_RGB)
            circle(x, y, radius - wall_um / mpp, LUMEN_RGB)
            ring_radius = radius - wall_um / (2 * mpp)
            nucleus_radii = np.full(8, ring_radius)
        nucleus_angles = rng.uniform(0, 2 * math.pi, len(nucleus_radii))
        for r, angle in zip(nucleus_radii, nucleus_angles):
            circle(x + r * math.cos(angle), y + r * math.sin(angle), nucleus_px, NUCLEUS_RGB)

    # Grain, drawn at a quarter of the size and enlarged, so it stays cheap on big slides.
    small = rng.integers(-6, 7, size=(height_px // 4 + 1, width_px // 4 + 1), dtype=np.int8)
    grain = cv2.resize(small, (width_px, height_px), interpolation=cv2.INTER_NEAREST)
    noisy = image.astype(np.int16) + grain[..., None]
    return np.clip(noisy, 0, 255).astype(np.uint8)
