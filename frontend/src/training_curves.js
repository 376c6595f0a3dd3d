// Line charts of per-epoch metrics, drawn as SVG (x: 1-based epoch, y: metric value).
const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 260;
const MARGIN = { left: 56, right: 150, top: 26, bottom: 36 };
const Y_TICKS = 5;

function element(name, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function formatTick(value) {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 100 || magnitude < 0.01) return value.toExponential(1);
  return value.toFixed(magnitude >= 10 ? 1 : 3);
}

// Draw `series` into `svg`, replacing what it showed.
//
// series: [{key, label, color, dashed}]. Each line reads rows[i][key] and skips rows without it.
// rows: metric dicts with an `epoch` field. yRange: [min, max], or null to fit the data.
// bestEpoch: epoch to mark with a vertical line, 0 for none. The svg gets data-points
// (the number of plotted epochs) so tests and users can see what was drawn.
export function drawCurves(svg, { title, series, rows, epochs, bestEpoch = 0, yRange = null, emptyText = "No finished epoch yet" }) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("preserveAspectRatio", "xMinYMin meet");
  svg.append(element("text", { x: MARGIN.left, y: 16, "font-size": 13, "font-weight": "bold" }, title));

  const plotted = series
    .map((line) => ({
      ...line,
      points: rows
        .filter((row) => typeof row[line.key] === "number" && Number.isFinite(row[line.key]))
        .map((row) => [row.epoch, row[line.key]]),
    }))
    .filter((line) => line.points.length > 0);
  const epochsPlotted = new Set(plotted.flatMap((line) => line.points.map(([epoch]) => epoch)));
  svg.dataset.points = String(epochsPlotted.size);
  svg.dataset.bestEpoch = String(bestEpoch || 0);

  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const lastEpoch = Math.max(epochs || 1, ...epochsPlotted, 1);
  let [yMin, yMax] = yRange || [Infinity, -Infinity];
  if (!yRange) {
    for (const line of plotted) {
      for (const [, value] of line.points) {
        yMin = Math.min(yMin, value);
        yMax = Math.max(yMax, value);
      }
    }
    if (!Number.isFinite(yMin)) [yMin, yMax] = [0, 1];
    yMin = Math.min(0, yMin);
    if (yMax <= yMin) yMax = yMin + 1;
  }
  // Epoch 1 sits on the left axis; a single-epoch run still gets a horizontal span.
  const x = (epoch) => MARGIN.left + (lastEpoch === 1 ? 0 : ((epoch - 1) / (lastEpoch - 1)) * plotWidth);
  const y = (value) => MARGIN.top + plotHeight - ((value - yMin) / (yMax - yMin)) * plotHeight;

  // Axes, ticks and grid lines.
  const axis = { stroke: "#555", "stroke-width": 1 };
  svg.append(element("line", { x1: MARGIN.left, y1: MARGIN.top, x2: MARGIN.left, y2: MARGIN.top + plotHeight, ...axis }));
  svg.append(element("line", {
    x1: MARGIN.left, y1: MARGIN.top + plotHeight, x2: MARGIN.left + plotWidth, y2: MARGIN.top + plotHeight, ...axis,
  }));
  for (let i = 0; i <= Y_TICKS; i += 1) {
    const value = yMin + ((yMax - yMin) * i) / Y_TICKS;
    svg.append(element("line", { x1: MARGIN.left, y1: y(value), x2: MARGIN.left + plotWidth, y2: y(value), stroke: "#eee" }));
    svg.append(element("text", { x: MARGIN.left - 6, y: y(value) + 4, "font-size": 11, "text-anchor": "end" }, formatTick(value)));
  }
  const epochStep = Math.max(1, Math.ceil(lastEpoch / 10));
  for (let epoch = 1; epoch <= lastEpoch; epoch += epochStep) {
    svg.append(element("text", { x: x(epoch), y: MARGIN.top + plotHeight + 16, "font-size": 11, "text-anchor": "middle" }, String(epoch)));
  }
  svg.append(element("text", {
    x: MARGIN.left + plotWidth / 2, y: HEIGHT - 4, "font-size": 11, "text-anchor": "middle",
  }, "epoch"));

  if (bestEpoch > 0) {
    svg.append(element("line", {
      x1: x(bestEpoch), y1: MARGIN.top, x2: x(bestEpoch), y2: MARGIN.top + plotHeight,
      stroke: "#2a7d2a", "stroke-dasharray": "4 3", "data-best-epoch-marker": bestEpoch,
    }));
    svg.append(element("text", { x: x(bestEpoch) + 4, y: MARGIN.top + 10, "font-size": 11, fill: "#2a7d2a" }, `best (${bestEpoch})`));
  }

  // One polyline with a dot per epoch for each series, and its legend entry.
  plotted.forEach((line, index) => {
    const points = line.points.map(([epoch, value]) => `${x(epoch)},${y(value)}`).join(" ");
    const style = { stroke: line.color, fill: "none", "stroke-width": 2 };
    if (line.dashed) style["stroke-dasharray"] = "6 4";
    svg.append(element("polyline", { points, ...style, "data-series": line.key }));
    for (const [epoch, value] of line.points) {
      const dot = element("circle", { cx: x(epoch), cy: y(value), r: 3, fill: line.color });
      dot.append(element("title", {}, `${line.label}, epoch ${epoch}: ${value.toPrecision(4)}`));
      svg.append(dot);
    }
    const legendY = MARGIN.top + 8 + index * 16;
    const legendX = MARGIN.left + plotWidth + 12;
    svg.append(element("line", { x1: legendX, y1: legendY, x2: legendX + 18, y2: legendY, ...style }));
    svg.append(element("text", { x: legendX + 24, y: legendY + 4, "font-size": 11 }, line.label));
  });
  if (plotted.length === 0) {
    svg.append(element("text", {
      x: MARGIN.left + plotWidth / 2, y: MARGIN.top + plotHeight / 2, "font-size": 12, "text-anchor": "middle", fill: "#777",
    }, emptyText));
  }
}
