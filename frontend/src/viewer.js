// OpenSeadragon on the slide's deep-zoom tiles (large-image's z/x/y pyramid).
import OpenSeadragon from "openseadragon";
import { api } from "./api.js";

// large-image level z = levels - 1 is full resolution; OpenSeadragon counts levels from a
// 1-pixel image, so its full-resolution level is ceil(log2(max side)).
export function tileSourceFor(slideId, metadata) {
  const maxLevel = Math.ceil(Math.log2(Math.max(metadata.width_px, metadata.height_px)));
  const minLevel = maxLevel - (metadata.levels - 1);
  return {
    width: metadata.width_px,
    height: metadata.height_px,
    tileSize: metadata.tile_px,
    tileOverlap: 0,
    minLevel,
    maxLevel,
    getTileUrl: (level, x, y) => api.tileUrl(slideId, level - minLevel, x, y),
  };
}

export async function openViewer(element, slideId) {
  const metadata = await api.tileMetadata(slideId);
  const viewer = OpenSeadragon({
    element,
    tileSources: tileSourceFor(slideId, metadata),
    prefixUrl: "/static/openseadragon-images/",
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 2,
    // Jumps between queued objects should orient the reviewer, not keep them waiting.
    animationTime: 0.6,
    // Every key of the page is declared in shortcuts.js, so OpenSeadragon's own keys are off.
    keyboardNavEnabled: false,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
  });
  let tilesLoaded = 0;
  viewer.addHandler("tile-loaded", () => {
    tilesLoaded += 1;
    element.dataset.tilesLoaded = String(tilesLoaded);
  });
  return { viewer, metadata };
}
