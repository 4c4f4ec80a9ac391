// Heatmaps composited client-side: the grey PNG the API sends, coloured, over the original photo.

// Jet, the colour map the API's own overlay uses: 256 RGB triples.
const JET = (() => {
  const table = new Uint8ClampedArray(256 * 3);
  const channel = (x) => Math.max(0, Math.min(1, 1.5 - Math.abs(x)));
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    table[i * 3] = 255 * channel(4 * v - 3);
    table[i * 3 + 1] = 255 * channel(4 * v - 2);
    table[i * 3 + 2] = 255 * channel(4 * v - 1);
  }
  return table;
})();

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the image could not be decoded"));
    image.src = src;
  });
}

// A canvas with the coloured heatmap (from base64 grey PNG) at the image's natural size; with the
// answer's `crop` (in the PNG's pixels), transparent outside it, where the model saw nothing (as the
// API's overlay leaves it untinted), not coloured as the lowest value.
export async function colourHeatmap(base64png, width, height, crop) {
  const grey = await loadImage(`data:image/png;base64,${base64png}`);
  const canvas = document.createElement("canvas");
  canvas.width = width || grey.naturalWidth;
  canvas.height = height || grey.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(grey, 0, 0, canvas.width, canvas.height);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  const sx = canvas.width / grey.naturalWidth;
  const sy = canvas.height / grey.naturalHeight;
  const [left, top, right, bottom] = crop
    ? [Math.round(crop.left * sx), Math.round(crop.top * sy), Math.round(crop.right * sx), Math.round(crop.bottom * sy)]
    : [0, 0, canvas.width, canvas.height];
  for (let y = 0, i = 0; y < canvas.height; y++) {
    const row = y >= top && y < bottom;
    for (let x = 0; x < canvas.width; x++, i += 4) {
      const v = data[i] * 3;
      data[i] = JET[v];
      data[i + 1] = JET[v + 1];
      data[i + 2] = JET[v + 2];
      data[i + 3] = row && x >= left && x < right ? 255 : 0;
    }
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

// Draw the original with the heatmap over it at `opacity`, or the heatmap alone: then, outside the
// crop, where the map is transparent, the photo faded to grey, so that what the model did not see
// still shows, and shows as not explained.
export function composite(target, original, heat, { opacity = 0.5, heatmapOnly = false } = {}) {
  const width = heat.width;
  const height = heat.height;
  if (target.width !== width) target.width = width;
  if (target.height !== height) target.height = height;
  const context = target.getContext("2d");
  context.globalAlpha = 1;
  context.clearRect(0, 0, width, height);
  if (heatmapOnly) {
    context.filter = "grayscale(1)";
    context.globalAlpha = 0.35;
    context.drawImage(original, 0, 0, width, height);
    context.filter = "none";
    context.globalAlpha = 1;
    context.drawImage(heat, 0, 0);
    return;
  }
  context.drawImage(original, 0, 0, width, height);
  context.globalAlpha = opacity;
  context.drawImage(heat, 0, 0);
  context.globalAlpha = 1;
}

// A colour bar legend (low to high), as a small canvas.
export function colourBar(width = 120, height = 8) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.className = "colour-bar";
  const context = canvas.getContext("2d");
  for (let x = 0; x < width; x++) {
    const i = Math.round((x / (width - 1)) * 255) * 3;
    context.fillStyle = `rgb(${JET[i]},${JET[i + 1]},${JET[i + 2]})`;
    context.fillRect(x, 0, 1, height);
  }
  return canvas;
}
