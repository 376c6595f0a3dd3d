// Pure geometry helpers of the outline editor.
//
// An editable outline is a list of polygons, each a list of open rings (the first vertex
// is not repeated at the end), each a list of [x, y] vertices in level-0 pixels. GeoJSON
// rings are closed, so the helpers convert at the boundary.

// Editable polygons from a GeoJSON Polygon or MultiPolygon (a deep copy).
export function openPolygons(geometry) {
  const polygons = geometry.type === "MultiPolygon" ? geometry.coordinates : [geometry.coordinates];
  return polygons.map((rings) =>
    rings.map((ring) => {
      const open = ring.map(([x, y]) => [x, y]);
      const first = open[0];
      const last = open[open.length - 1];
      if (open.length > 1 && first[0] === last[0] && first[1] === last[1]) open.pop();
      return open;
    }),
  );
}

// GeoJSON geometry of the given type ("Polygon" or "MultiPolygon") with closed rings.
export function closedGeometry(type, polygons) {
  const closed = polygons.map((rings) => rings.map((ring) => [...ring.map(([x, y]) => [x, y]), [...ring[0]]]));
  return type === "MultiPolygon" ? { type, coordinates: closed } : { type: "Polygon", coordinates: closed[0] };
}

// A polygon from one open ring of [x, y] vertices.
export function polygonFromVertices(vertices) {
  return closedGeometry("Polygon", [[vertices]]);
}

function distanceToSegment(px, py, [ax, ay], [bx, by]) {
  const dx = bx - ax;
  const dy = by - ay;
  const lengthSquared = dx * dx + dy * dy;
  const t = lengthSquared === 0 ? 0 : Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / lengthSquared));
  return { distance: Math.hypot(px - (ax + t * dx), py - (ay + t * dy)), t };
}

// The vertex nearest to a screen point within maxDistancePx, as {polygon, ring, vertex}
// indices, or null. toScreen maps level-0 [x, y] to screen [x, y].
export function nearestVertex(polygons, screenPoint, toScreen, maxDistancePx) {
  let best = null;
  let bestDistance = maxDistancePx;
  polygons.forEach((rings, polygon) =>
    rings.forEach((ring, ringIndex) =>
      ring.forEach(([x, y], vertex) => {
        const [sx, sy] = toScreen(x, y);
        const distance = Math.hypot(sx - screenPoint[0], sy - screenPoint[1]);
        if (distance <= bestDistance) {
          best = { polygon, ring: ringIndex, vertex };
          bestDistance = distance;
        }
      }),
    ),
  );
  return best;
}

// The ring edge nearest to a screen point within maxDistancePx, as {polygon, ring,
// vertex} where vertex is the index at which a new vertex is inserted, or null.
export function nearestEdge(polygons, screenPoint, toScreen, maxDistancePx) {
  let best = null;
  let bestDistance = maxDistancePx;
  polygons.forEach((rings, polygon) =>
    rings.forEach((ring, ringIndex) =>
      ring.forEach((start, vertex) => {
        const end = ring[(vertex + 1) % ring.length];
        const { distance } = distanceToSegment(
          screenPoint[0], screenPoint[1], toScreen(...start), toScreen(...end),
        );
        if (distance <= bestDistance) {
          best = { polygon, ring: ringIndex, vertex: vertex + 1 };
          bestDistance = distance;
        }
      }),
    ),
  );
  return best;
}

// Vertices without consecutive repeats closer than minDistancePx on screen, as a double
// click leaves behind (both of its clicks add a vertex at the same spot).
export function withoutNearDuplicates(vertices, toScreen, minDistancePx) {
  const kept = [];
  for (const vertex of vertices) {
    const previous = kept[kept.length - 1];
    if (previous) {
      const [ax, ay] = toScreen(...previous);
      const [bx, by] = toScreen(...vertex);
      if (Math.hypot(ax - bx, ay - by) < minDistancePx) continue;
    }
    kept.push(vertex);
  }
  return kept;
}
