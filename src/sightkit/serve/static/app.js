// The page of `sightkit serve`: send an image to /v1/predict, draw the boxes on a canvas, list
// them in a table (a segmenter's answer: the share of each class); enrol and identify faces when the server has a face model. Plain browser
// JavaScript, no build step.
"use strict";

// Tableau's 10 colours, as sightkit's pictures use them (sightkit/tasks/draw.py).
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
let classes = [];

const $ = (id) => document.getElementById(id);

function colourOf(label) {
  const index = classes.indexOf(label);
  const key = index >= 0 ? index : [...label].reduce((sum, c) => sum + c.charCodeAt(0), 0);
  return PALETTE[key % PALETTE.length];
}

function say(element, text, isError = false) {
  element.textContent = text;
  element.className = isError ? "error" : "";
}

// The server answers every error as JSON {"detail", "error"}. The key, when one is typed in,
// goes with every call (a server with a key may want it for reading too).
async function call(url, options = {}) {
  const key = $("api-key").value;
  const headers = key ? { ...(options.headers || {}), "X-API-Key": key } : options.headers;
  const response = await fetch(url, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok) {
    throw new Error(body && body.detail ? body.detail : `${response.status} ${response.statusText}`);
  }
  return body;
}

async function loadModel() {
  try {
    const info = await call("/v1/model");
    classes = info.classes || [];
    const parts = [];
    if (info.task) {
      parts.push(`${info.task}: ${info.model}, ${classes.length} classes (${classes.join(", ")})`);
      $("conf").value = info.conf;
      $("detect-section").hidden = false;
    }
    if (info.face) {
      parts.push(`faces: ${info.face.model}, ${info.face.identities} people enrolled`);
      $("face-section").hidden = false;
      $("gallery").textContent = `Accepted above a cosine similarity of ${info.face.threshold}.`;
    }
    parts.push(`batches of up to ${info.batching.max_batch}`);
    $("model").textContent = parts.join(" · ");
  } catch (error) {
    say($("model"), `cannot reach the server: ${error.message} (a server with a key needs it below)`, true);
  }
}

// What the canvas shows, kept so that a resized window draws it again at the new width.
let shown = null;
let drawnForWidth = 0;  // the section's width when it was drawn

// The picture fills the section's width (small images are enlarged, large ones reduced) but
// stays within 80% of the window's height, so that a tall image does not push the table away.
function fitScale(width, height) {
  const room = $("detect-section").clientWidth;
  return Math.min(room / width, (0.8 * window.innerHeight) / height);
}

// Draws the image scaled to fit and returns the context with the image-to-canvas scale factors.
// The canvas holds device pixels (sharp on high-density screens); drawing is in CSS pixels.
function drawImage(bitmap) {
  const canvas = $("canvas");
  const scale = fitScale(bitmap.width, bitmap.height);
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  return { context, sx: width / bitmap.width, sy: height / bitmap.height };
}

// Boxes arrive in the image's pixels; sx and sy take them to the canvas's CSS pixels. Lines and
// labels have a fixed on-screen size, whatever the image's size.
function drawBoxes({ context, sx, sy }, detections) {
  context.font = "14px sans-serif";
  context.textBaseline = "top";
  context.lineWidth = 3;
  const height = 18;
  for (const d of detections) {
    const [x1, y1, x2, y2] = [d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy];
    const colour = colourOf(d.label);
    context.strokeStyle = colour;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const top = y1 - height >= 0 ? y1 - height : y1;
    context.fillStyle = colour;
    context.fillRect(x1, top, context.measureText(text).width + 6, height);
    context.fillStyle = "#fff";
    context.fillText(text, x1 + 3, top + 2);
  }
}

// One entry per class found: its colour, its name and how many boxes it has, in the model's class order.
function fillLegend(detections) {
  const legend = $("legend");
  const counts = new Map();
  for (const d of detections) counts.set(d.label, (counts.get(d.label) || 0) + 1);
  const order = (label) => (classes.includes(label) ? classes.indexOf(label) : classes.length);
  const labels = [...counts.keys()].sort((a, b) => order(a) - order(b) || a.localeCompare(b));
  legend.replaceChildren(
    ...labels.map((label) => {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(label);
      item.append(swatch, `${label} × ${counts.get(label)}`);
      return item;
    }),
  );
  legend.hidden = labels.length === 0;
}

// /v1/predict answers Results.to_dict(): parallel lists (boxes, scores, names); the page draws
// one object per instance.
function detectionsOf(result) {
  return (result.boxes || []).map((box, i) => ({ box, score: result.scores[i], label: result.names[i] }));
}

function show(bitmap, detections) {
  shown = { bitmap, detections };
  drawnForWidth = $("detect-section").clientWidth;
  const drawn = drawImage(bitmap);
  if (detections) drawBoxes(drawn, detections);
}

// A new width (a resized window, a scroll bar that appears) draws the picture again to fit it.
new ResizeObserver(() => {
  const width = $("detect-section").clientWidth;
  if (shown && width !== drawnForWidth) show(shown.bitmap, shown.detections);
}).observe($("detect-section"));

function fillTable(detections) {
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  detections.forEach((d, i) => {
    const row = body.insertRow();
    row.insertCell().textContent = String(i + 1);
    const label = row.insertCell();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourOf(d.label);
    label.append(swatch, d.label);
    row.insertCell().textContent = d.score.toFixed(3);
    row.insertCell().textContent = d.box.map((c) => c.toFixed(1)).join(", ");
  });
  $("detections").hidden = false;
}

function fillClasses(fractions) {
  const body = $("classes").querySelector("tbody");
  body.replaceChildren();
  for (const [name, share] of Object.entries(fractions).sort((a, b) => b[1] - a[1])) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = `${(100 * share).toFixed(1)} %`;
  }
  $("classes").hidden = false;
}

async function detect(file) {
  const status = $("status");
  say(status, `detecting in ${file.name}…`);
  const form = new FormData();
  form.append("images", file, file.name);
  const conf = Number($("conf").value);
  try {
    // The server's answer first: for a file that is not an image it says why.
    const answer = await call(`/v1/predict?conf=${encodeURIComponent(conf)}`, { method: "POST", body: form });
    const bitmap = await createImageBitmap(file);
    const result = answer.results[0];
    const size = `${result.image} (${result.width} x ${result.height})`;
    if (result.classes) {  // a segmenter: how much of the image each class covers
      show(bitmap, null);
      $("legend").hidden = true;
      fillClasses(result.classes);
      say(status, `segmented ${size}`);
    } else {
      const detections = detectionsOf(result);
      show(bitmap, detections);
      fillLegend(detections);
      fillTable(detections);
      const count = detections.length;
      say(status, `${count} detection${count === 1 ? "" : "s"} in ${size}`);
    }
  } catch (error) {
    $("detections").hidden = true;
    $("classes").hidden = true;
    $("legend").hidden = true;
    say(status, error.message, true);
  }
}

function setUpDetection() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) detect(event.target.files[0]);
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) detect(event.dataTransfer.files[0]);
  });
}

function setUpFaces() {
  const status = $("face-status");
  $("enroll-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    form.append("name", $("enroll-name").value);
    for (const file of $("enroll-files").files) form.append("images", file, file.name);
    try {
      const answer = await call("/v1/face/enroll", { method: "POST", body: form });
      say(status, `${answer.name}: ${answer.added} added, ${answer.total} enrolled`);
      loadModel();
    } catch (error) {
      say(status, error.message, true);
    }
  });
  $("identify-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    const file = $("identify-file").files[0];
    form.append("images", file, file.name);
    try {
      const answer = await call("/v1/face/identify", { method: "POST", body: form });
      const result = answer.results[0];
      const body = $("matches").querySelector("tbody");
      body.replaceChildren();
      if (!result.faces.length) {
        say(status, `${result.image}: no face found`);
        $("matches").hidden = true;
        return;
      }
      const best = result.faces[0];
      const more = result.faces.length > 1 ? ` (the first of ${result.faces.length} faces)` : "";
      say(status, `${result.image}: ${best.identity || "unknown"}${more}`);
      for (const match of best.matches) {
        const row = body.insertRow();
        row.insertCell().textContent = match.name;
        row.insertCell().textContent = match.score.toFixed(3);
      }
      $("matches").hidden = false;
    } catch (error) {
      say(status, error.message, true);
    }
  });
}

setUpDetection();
setUpFaces();
loadModel();
