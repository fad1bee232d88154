// Page logic of the browser demo. It runs on the main thread and only handles the page: photos
// are decoded and embedded by worker.js, which owns the WebAssembly module, so the tab stays
// responsive while the model works.
//
// Every action that uses the model (adding or removing a species, choosing a query, switching
// the backend or the built-in species) becomes one task in a queue. Actions therefore never
// overlap, and `window.demo` describes a consistent state between them.

/** Largest photo file accepted, in bytes, checked before the file is read or sent anywhere. */
const MAX_FILE_BYTES = 50 * 1000 * 1000;
/** Number of species shown in the result list; `window.demo.lastResult` keeps all of them. */
const TOP_K = 5;
const BACKEND_NAMES = { webgpu: 'WebGPU', cpu: 'CPU (WebAssembly)' };

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Worker client

/** An error returned by the worker; `fatal` means the WebAssembly instance has to be replaced. */
class WorkerError extends Error {
  constructor(message, fatal) {
    super(message);
    this.fatal = fatal;
  }
}

/** One module worker with a promise per request. */
class ModelWorker {
  constructor(onProgress) {
    this.nextId = 1;
    this.pending = new Map();
    this.onProgress = onProgress;
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.worker.addEventListener('message', (event) => this.receive(event.data));
    // Fires when the worker script or one of its imports cannot be loaded, or on an error that
    // the worker did not handle. No later reply can be trusted, so every pending request fails.
    this.worker.addEventListener('error', (event) => {
      const detail = event.message || 'the worker script or the WebAssembly glue could not be loaded';
      this.rejectAll(new WorkerError(`the model worker failed: ${detail}`, true));
    });
    this.worker.addEventListener('messageerror', () => {
      this.rejectAll(new WorkerError('the model worker sent a message that could not be read', true));
    });
  }

  request(op, fields = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, op, ...fields });
    });
  }

  receive(data) {
    if (data.progress !== undefined) {
      this.onProgress(data.progress);
      return;
    }
    if (data.id === null) {
      // The instance trapped between requests.
      this.rejectAll(new WorkerError(data.error, true));
      return;
    }
    const entry = this.pending.get(data.id);
    if (!entry) {
      return;
    }
    this.pending.delete(data.id);
    if (data.ok) {
      entry.resolve(data.result);
    } else {
      entry.reject(new WorkerError(data.error, data.fatal));
    }
  }

  rejectAll(error) {
    for (const entry of this.pending.values()) {
      entry.reject(error);
    }
    this.pending.clear();
  }

  terminate() {
    this.worker.terminate();
    this.rejectAll(new WorkerError('the model worker was stopped', true));
  }
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  /** Backend of the loaded model, "webgpu" or "cpu"; null before the first load. */
  backend: null,
  /** The WebGPU adapter as `navigator.gpu.requestAdapter()` describes it, or null. */
  adapter: null,
  /** Reason WebGPU is unavailable in this browser, or null when it is available. */
  webgpuProblem: null,
  /** The loaded bundle: {info, manifest, builtin (Float32Array), maxPixels}, or null. */
  model: null,
  builtinOn: true,
  /** Species added on this page: {name, photos: [{name, bytes, url, embedding}], prototype}. */
  userSpecies: [],
  /** Files chosen for the next "Add species", not yet sent to the worker. */
  pendingPhotos: [],
  /** The query photo: {name, bytes, url}; url is set once the worker has accepted the photo. */
  query: null,
  lastResult: null,
  /**
   * Latency since the last model load, in ms. The first query is cold and later ones are warm.
   * `firstMs` is the first photo of any kind, species or query, which also compiles the GPU shaders.
   */
  latency: { coldMs: null, warmMs: [], firstMs: null },
  messages: [],
  queries: 0,
  /** Number of finished actions, so a test can wait for the one it started. */
  actions: 0,
  running: 0,
  pastedCount: 0,
};

let worker = new ModelWorker(showProgress);

/** Returns the lookup key of a species name, so "Cardinal" and " cardinal" are one species. */
function nameKey(name) {
  return name.trim().toLowerCase();
}

/**
 * Returns the species that take part in classification, in the order of the prototype rows:
 * the built-in species (when included) that no user species replaces, then the user species.
 */
function activeSpecies() {
  const list = [];
  const model = state.model;
  const userKeys = new Set(state.userSpecies.map((species) => nameKey(species.name)));
  if (model && state.builtinOn) {
    const dim = model.info.embeddingDim;
    model.info.species.forEach((species, index) => {
      if (!userKeys.has(nameKey(species.name))) {
        list.push({
          name: species.name,
          builtin: true,
          photos: species.photos,
          prototype: model.builtin.subarray(index * dim, (index + 1) * dim),
        });
      }
    });
  }
  for (const species of state.userSpecies) {
    list.push({ name: species.name, builtin: false, photos: species.photos.length, prototype: species.prototype });
  }
  return list;
}

/** Returns the element-wise mean of equal-length embeddings, summed in double precision. */
function meanEmbedding(embeddings) {
  const sum = new Float64Array(embeddings[0].length);
  for (const embedding of embeddings) {
    for (let i = 0; i < sum.length; i++) {
      sum[i] += embedding[i];
    }
  }
  const mean = new Float32Array(sum.length);
  for (let i = 0; i < sum.length; i++) {
    mean[i] = sum[i] / embeddings.length;
  }
  return mean;
}

function median(values) {
  if (values.length === 0) {
    return null;
  }
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function formatSize(bytes) {
  if (bytes < 1e6) {
    return `${Math.ceil(bytes / 1e3)} kB`;
  }
  const megabytes = bytes / 1e6;
  return `${Number.isInteger(megabytes) ? megabytes : megabytes.toFixed(1)} MB`;
}

function formatMs(ms) {
  return ms === null ? '–' : `${Math.round(ms)} ms`;
}

// ---------------------------------------------------------------------------------------------
// Status, messages and the action queue

let queue = Promise.resolve();

/** Runs `task` after every earlier action; errors it throws are shown as messages. */
function enqueue(label, task) {
  state.running += 1;
  renderStatus(label);
  queue = queue.then(async () => {
    clearMessages();
    renderStatus(label);
    try {
      await task();
    } catch (error) {
      showMessage(error.message);
      console.error(error);
    } finally {
      state.running -= 1;
      state.actions += 1;
      renderAll();
    }
  });
  return queue;
}

function showProgress(text) {
  renderStatus(text);
}

function renderStatus(busyText) {
  const busy = state.running > 0;
  document.body.classList.toggle('busy', busy);
  $('status').setAttribute('aria-busy', String(busy));
  let text;
  if (busy) {
    text = busyText || 'Working…';
  } else if (!state.model) {
    text = 'The model is not loaded; see the message above, then reload the page.';
  } else if (activeSpecies().length < 2) {
    text = 'Ready. Add one or more photos of each species, then choose a photo to recognise.';
  } else {
    text = 'Ready. Choose a photo to recognise, or add more species.';
  }
  $('status-text').textContent = text;
}

function showMessage(text) {
  state.messages.push(text);
  const item = document.createElement('li');
  item.textContent = text;
  $('message-list').append(item);
  $('message').hidden = false;
}

function clearMessages() {
  $('message-list').replaceChildren();
  $('message').hidden = true;
}

/** Returns the reason a file is rejected before it is read, or null when it may be sent. */
function checkFileSize(file) {
  if (file.size > MAX_FILE_BYTES) {
    return `${file.name} is ${formatSize(file.size)}, more than the ${formatSize(MAX_FILE_BYTES)} limit for a photo; choose a smaller file.`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Backend and model

async function probeWebGpu() {
  if (!('gpu' in navigator)) {
    return window.isSecureContext
      ? 'this browser does not offer WebGPU (navigator.gpu is missing)'
      : 'WebGPU needs a secure context (HTTPS or localhost)';
  }
  let adapter;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (error) {
    return `requesting a WebGPU adapter failed (${error.message})`;
  }
  if (!adapter) {
    return 'the browser found no WebGPU adapter (navigator.gpu.requestAdapter() returned null)';
  }
  const info = adapter.info || {};
  const parts = [info.description || [info.vendor, info.architecture, info.device].filter(Boolean).join(' ')];
  if (adapter.isFallbackAdapter || info.isFallbackAdapter) {
    parts.push('(software fallback adapter)');
  }
  state.adapter = parts.filter(Boolean).join(' ') || 'unnamed adapter';
  return null;
}

/** Loads the model on `backend`, falling back from WebGPU to the CPU, then re-embeds user photos. */
async function loadModel(backend) {
  state.model = null;
  state.backend = null;
  renderAll();
  renderStatus(`Loading the model on ${BACKEND_NAMES[backend]}…`);
  let result;
  try {
    result = await worker.request('load', { backend });
  } catch (error) {
    if (error.fatal) {
      restartWorker();
    }
    if (backend !== 'webgpu') {
      throw new Error(`The model could not be loaded on the CPU: ${error.message}`);
    }
    showMessage(`Loading the model on WebGPU failed, so the page uses the CPU backend. Details: ${error.message}`);
    renderStatus(`Loading the model on ${BACKEND_NAMES.cpu}…`);
    try {
      result = await worker.request('load', { backend: 'cpu' });
    } catch (cpuError) {
      throw new Error(`The model could not be loaded on the CPU either: ${cpuError.message}`);
    }
    backend = 'cpu';
  }

  state.model = result;
  state.backend = backend;
  state.latency = { coldMs: null, warmMs: [], firstMs: null };
  renderAll();
  await reembedUserSpecies();
}

function restartWorker() {
  worker.terminate();
  worker = new ModelWorker(showProgress);
}

/** Sends an embed or classify request through `send` and records it when it is the first photo. */
async function timePhoto(send, op, fields) {
  const started = performance.now();
  const result = await send(op, fields);
  if (state.latency.firstMs === null) {
    state.latency.firstMs = performance.now() - started;
  }
  return result;
}

/**
 * Sends one request to the worker. When the WebAssembly instance has crashed, it starts a new
 * worker and reloads the model before rethrowing, so the page keeps working for the next action.
 */
async function request(op, fields) {
  try {
    return await worker.request(op, fields);
  } catch (error) {
    if (!error.fatal) {
      throw error;
    }
    const backend = state.backend || 'cpu';
    restartWorker();
    try {
      await loadModel(backend);
    } catch (reloadError) {
      throw new Error(`${error.message}. Restarting the model failed too (${reloadError.message}); reload the page.`);
    }
    throw new Error(`${error.message} (the model was restarted on ${BACKEND_NAMES[state.backend]})`);
  }
}

/** Embeds every user photo again, so all prototypes come from the backend now loaded. */
async function reembedUserSpecies() {
  const total = state.userSpecies.reduce((count, species) => count + species.photos.length, 0);
  let done = 0;
  for (const species of [...state.userSpecies]) {
    const kept = [];
    for (const photo of species.photos) {
      done += 1;
      renderStatus(`Embedding your photos on ${BACKEND_NAMES[state.backend]}: ${done} of ${total}`);
      try {
        // Called on the worker directly: a crash here ends the reload instead of starting another.
        const { embedding } = await timePhoto((op, fields) => worker.request(op, fields), 'embed', { bytes: photo.bytes });
        kept.push({ ...photo, embedding });
      } catch (error) {
        if (error.fatal) {
          throw error;
        }
        URL.revokeObjectURL(photo.url);
        showMessage(`${photo.name} was left out of ${species.name} on ${BACKEND_NAMES[state.backend]}: ${error.message}`);
      }
    }
    species.photos = kept;
    if (kept.length === 0) {
      state.userSpecies = state.userSpecies.filter((other) => other !== species);
      showMessage(`${species.name} was removed: none of its photos could be embedded on ${BACKEND_NAMES[state.backend]}.`);
    } else {
      species.prototype = meanEmbedding(kept.map((photo) => photo.embedding));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Actions

async function addSpecies() {
  const name = $('species-name').value.trim().replace(/\s+/g, ' ');
  const files = state.pendingPhotos;
  if (name === '') {
    showMessage('Enter the species name before adding its photos.');
    return;
  }
  if (files.length === 0) {
    showMessage(`Add at least one photo of ${name} first: drop, paste or choose photos.`);
    return;
  }
  if (!state.model) {
    showMessage('The model is not loaded, so no species can be added.');
    return;
  }
  state.pendingPhotos = [];
  renderPending();

  const usable = [];
  for (const [index, file] of files.entries()) {
    renderStatus(`Embedding photo ${index + 1} of ${files.length} of ${name}: ${file.name}`);
    const tooLarge = checkFileSize(file);
    if (tooLarge) {
      showMessage(`${tooLarge} It was left out of ${name}.`);
      continue;
    }
    try {
      const bytes = await file.arrayBuffer();
      const { embedding } = await timePhoto(request, 'embed', { bytes });
      usable.push({ name: file.name, bytes, embedding, url: URL.createObjectURL(file) });
    } catch (error) {
      showMessage(`${file.name} was left out of ${name}: ${error.message}`);
    }
  }
  if (usable.length === 0) {
    const count = files.length === 1 ? 'its only photo' : `any of its ${files.length} photos`;
    showMessage(`${name} was not added: the model could not use ${count}.`);
    return;
  }

  const existing = state.userSpecies.find((species) => nameKey(species.name) === nameKey(name));
  if (existing) {
    existing.photos.push(...usable);
    existing.prototype = meanEmbedding(existing.photos.map((photo) => photo.embedding));
  } else {
    state.userSpecies.push({ name, photos: usable, prototype: meanEmbedding(usable.map((photo) => photo.embedding)) });
  }
  $('species-name').value = '';
  renderSpecies();
  await reclassify();
}

async function removeSpecies(species) {
  state.userSpecies = state.userSpecies.filter((other) => other !== species);
  for (const photo of species.photos) {
    URL.revokeObjectURL(photo.url);
  }
  renderSpecies();
  await reclassify();
}

/** Classifies the current query again after the species or the backend changed. */
async function reclassify() {
  if (state.query && state.model && activeSpecies().length >= 2) {
    await classify(state.query);
  }
}

async function classifyFile(file) {
  const tooLarge = checkFileSize(file);
  if (tooLarge) {
    showMessage(tooLarge);
    return;
  }
  let bytes;
  try {
    bytes = await file.arrayBuffer();
  } catch (error) {
    showMessage(`${file.name} could not be read: ${error.message}`);
    return;
  }
  await classify({ name: file.name, bytes, url: null });
}

async function classify(query) {
  if (!state.model) {
    showMessage(`${query.name} cannot be recognised because the model is not loaded.`);
    return;
  }
  if (state.query !== query) {
    setQuery(query);
  }
  const species = activeSpecies();
  if (species.length < 2) {
    showMessage(`${query.name} is waiting: recognition needs at least 2 species and there ${species.length === 1 ? 'is 1' : `are ${species.length}`}. Add species or include the built-in ones.`);
    state.lastResult = null;
    renderResult();
    return;
  }

  const dim = state.model.info.embeddingDim;
  const prototypes = new Float32Array(species.length * dim);
  species.forEach((entry, index) => prototypes.set(entry.prototype, index * dim));

  renderStatus(`Recognising ${query.name} on ${BACKEND_NAMES[state.backend]}…`);
  const backend = state.backend;
  const started = performance.now();
  let reply;
  try {
    reply = await timePhoto(request, 'classify', { bytes: query.bytes, prototypes });
  } catch (error) {
    showMessage(`${query.name} could not be recognised: ${error.message}`);
    setQuery(null);
    state.lastResult = null;
    renderResult();
    return;
  }
  const ms = performance.now() - started;

  const cold = state.latency.coldMs === null;
  if (cold) {
    state.latency.coldMs = ms;
  } else {
    state.latency.warmMs.push(ms);
  }
  if (!query.url) {
    query.url = URL.createObjectURL(new Blob([query.bytes]));
  }
  const scores = species
    .map((entry, index) => ({ name: entry.name, builtin: entry.builtin, score: reply.scores[index] }))
    .sort((a, b) => b.score - a.score);
  state.queries += 1;
  state.lastResult = { query: query.name, backend, predicted: scores[0].name, scores, ms, cold };
  renderResult();
}

function setQuery(query) {
  if (state.query && state.query.url) {
    URL.revokeObjectURL(state.query.url);
  }
  state.query = query;
}

async function switchBackend(backend) {
  if (backend === state.backend && state.model) {
    return;
  }
  await loadModel(backend);
  await reclassify();
}

async function setBuiltin(on) {
  state.builtinOn = on;
  renderSpecies();
  await reclassify();
}

// ---------------------------------------------------------------------------------------------
// Rendering

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function renderBackend() {
  const label = $('backend-label');
  const adapter = $('adapter-label');
  if (!state.backend) {
    label.textContent = 'loading…';
    adapter.textContent = '';
  } else {
    label.textContent = BACKEND_NAMES[state.backend];
    adapter.textContent = state.backend === 'webgpu' && state.adapter ? `adapter: ${state.adapter}` : '';
  }
  const select = $('backend-select');
  if (state.backend) {
    select.value = state.backend;
  }
  select.querySelector('option[value="webgpu"]').textContent = state.webgpuProblem
    ? 'WebGPU (not available here)'
    : 'WebGPU';
  let note = '';
  if (state.webgpuProblem) {
    note = `WebGPU is not used: ${state.webgpuProblem}.`;
  } else if (state.backend === 'cpu') {
    note = 'This browser offers WebGPU too; choose it in the menu to run the model on the GPU.';
  }
  $('backend-note').textContent = note;
}

function renderSpecies() {
  const model = state.model;
  const builtinCount = model ? model.info.species.length : 0;
  $('builtin-count').textContent = String(builtinCount);
  $('builtin-row').hidden = model !== null && builtinCount === 0;
  $('builtin-toggle').checked = state.builtinOn;

  const list = $('species-list');
  list.replaceChildren();
  for (const species of state.userSpecies) {
    const item = element('li', 'species');
    const head = element('div', 'species-head');
    const count = species.photos.length === 1 ? '1 photo' : `${species.photos.length} photos`;
    head.append(element('strong', 'species-name', species.name), element('span', 'species-count', count));
    const remove = element('button', 'remove-species', 'Remove');
    remove.type = 'button';
    remove.dataset.name = species.name;
    remove.setAttribute('aria-label', `Remove ${species.name}`);
    remove.addEventListener('click', () => enqueue(`Removing ${species.name}…`, () => removeSpecies(species)));
    head.append(remove);
    const thumbs = element('div', 'thumbs');
    for (const photo of species.photos) {
      const image = element('img', 'thumb');
      image.src = photo.url;
      image.alt = photo.name;
      image.title = photo.name;
      image.decoding = 'async';
      thumbs.append(image);
    }
    item.append(head, thumbs);
    list.append(item);
  }

  const active = activeSpecies();
  const builtinActive = active.filter((species) => species.builtin).length;
  let summary = `${active.length} species in use`;
  if (builtinActive > 0) {
    summary += ` (${builtinActive} built-in, ${active.length - builtinActive} yours)`;
  }
  summary += active.length < 2 ? '. Recognition needs at least 2.' : '.';
  $('species-summary').textContent = summary;
}

function renderPending() {
  const list = $('species-pending');
  list.replaceChildren();
  state.pendingPhotos.forEach((file, index) => {
    const chip = element('li', 'chip', `${file.name} (${formatSize(file.size)})`);
    const remove = element('button', 'chip-remove', '×');
    remove.type = 'button';
    remove.setAttribute('aria-label', `Remove ${file.name}`);
    remove.addEventListener('click', () => {
      state.pendingPhotos.splice(index, 1);
      renderPending();
    });
    chip.append(remove);
    list.append(chip);
  });
  const count = state.pendingPhotos.length;
  $('pending-count').textContent = count === 0 ? 'No photos chosen yet.' : `${count} photo${count === 1 ? '' : 's'} ready to add.`;
}

function renderResult() {
  const query = state.query;
  const preview = $('query-preview');
  if (query && query.url) {
    preview.src = query.url;
    preview.alt = query.name;
    preview.hidden = false;
  } else {
    preview.removeAttribute('src');
    preview.hidden = true;
  }
  $('query-name').textContent = query ? query.name : 'No photo chosen yet.';
  $('classify-again').disabled = !query;

  const result = state.lastResult;
  const body = $('result-body');
  body.replaceChildren();
  if (!result) {
    body.append(element('p', 'placeholder', 'The prediction appears here.'));
  } else {
    const top = result.scores[0];
    const headline = element('p', 'predicted');
    headline.append('Predicted: ', element('strong', null, result.predicted), ` (${(top.score * 100).toFixed(1)} %)`);
    const list = element('ol', 'top');
    for (const entry of result.scores.slice(0, TOP_K)) {
      const item = element('li');
      const percent = entry.score * 100;
      const label = element('span', 'top-name', entry.name);
      if (entry.builtin) {
        label.append(element('span', 'tag', 'built-in'));
      }
      const bar = element('span', 'bar');
      bar.style.setProperty('--value', `${Math.max(percent, 0.5)}%`);
      item.append(label, bar, element('span', 'top-score', `${percent.toFixed(1)} %`));
      list.append(item);
    }
    const details = element(
      'p',
      'result-details',
      `${result.query} · ${BACKEND_NAMES[result.backend]} · ${formatMs(result.ms)} (${result.cold ? 'cold' : 'warm'}) · ${result.scores.length} species`,
    );
    body.append(headline, list, details);
  }
  renderLatency();
}

function renderLatency() {
  const latency = state.latency;
  const warm = latency.warmMs;
  $('latency-backend').textContent = state.backend ? BACKEND_NAMES[state.backend] : '–';
  $('latency-first').textContent = formatMs(latency.firstMs);
  $('latency-cold').textContent = formatMs(latency.coldMs);
  $('latency-warm-last').textContent = formatMs(warm.length ? warm[warm.length - 1] : null);
  $('latency-warm-median').textContent = formatMs(median(warm));
  $('latency-warm-median-label').textContent = warm.length ? `Warm, median of ${warm.length}` : 'Warm, median';
}

function renderFooter() {
  const model = state.model;
  const facts = $('model-facts');
  if (!model) {
    facts.textContent = 'Model: not loaded.';
    return;
  }
  const info = model.info;
  const parts = [`Model: ${info.backbone} backbone, ${info.imageSize}×${info.imageSize} input, ${info.embeddingDim}-value embeddings`];
  const accuracy = model.manifest.accuracy;
  if (accuracy) {
    const task = accuracy.n_way && accuracy.n_shot ? `${accuracy.n_way}-way ${accuracy.n_shot}-shot ` : '';
    parts.push(
      `${task}accuracy ${accuracy.accuracy.toFixed(2)} % ± ${accuracy.ci95.toFixed(2)} % (95 % CI) on ${accuracy.episodes} episodes of the ${accuracy.split} split`,
    );
  } else {
    parts.push('accuracy not measured for this bundle');
  }
  const photoCounts = info.species.map((species) => species.photos);
  if (photoCounts.length > 0) {
    const fewest = Math.min(...photoCounts);
    const most = Math.max(...photoCounts);
    const range = fewest === most ? `${fewest}` : `${fewest} to ${most}`;
    parts.push(`each built-in prototype is the mean of ${range} photos`);
  }
  parts.push(`photos up to ${formatSize(MAX_FILE_BYTES)} and ${Math.round(model.maxPixels / 1e6)} megapixels`);
  facts.textContent = `${parts.join('; ')}.`;
}

function renderAll() {
  renderBackend();
  renderSpecies();
  renderPending();
  renderResult();
  renderFooter();
  renderStatus();
}

// ---------------------------------------------------------------------------------------------
// Input: file pickers, drop zones and paste

function addPendingPhotos(files) {
  for (const file of files) {
    const tooLarge = checkFileSize(file);
    if (tooLarge) {
      showMessage(tooLarge);
    } else {
      state.pendingPhotos.push(file);
    }
  }
  renderPending();
}

function chooseQuery(files) {
  if (files.length === 0) {
    return;
  }
  const file = files[0];
  enqueue(`Recognising ${file.name}…`, async () => {
    if (files.length > 1) {
      showMessage(`Only one photo is recognised at a time; using ${file.name}.`);
    }
    await classifyFile(file);
  });
}

function setUpDropZone(zone, onFiles) {
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
    zone.classList.add('dragging');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('dragging');
    onFiles([...event.dataTransfer.files]);
  });
}

/** Returns the files of a paste, renamed when the clipboard gives them a generic name. */
function pastedFiles(event) {
  const files = [...(event.clipboardData ? event.clipboardData.files : [])];
  return files.map((file) => {
    state.pastedCount += 1;
    const extension = (file.type.split('/')[1] || 'bin').replace('jpeg', 'jpg');
    return new File([file], `pasted-image-${state.pastedCount}.${extension}`, { type: file.type });
  });
}

function setUpInput() {
  $('species-files').addEventListener('change', (event) => {
    addPendingPhotos([...event.target.files]);
    // Clearing the input lets the same file be chosen again later.
    event.target.value = '';
  });
  $('query-file').addEventListener('change', (event) => {
    const files = [...event.target.files];
    event.target.value = '';
    chooseQuery(files);
  });
  setUpDropZone($('species-drop'), addPendingPhotos);
  setUpDropZone($('query-drop'), chooseQuery);

  // A file dropped outside a drop zone would make the browser leave the page.
  document.addEventListener('dragover', (event) => event.preventDefault());
  document.addEventListener('drop', (event) => event.preventDefault());

  // Image data pasted while the species form has the focus becomes a species photo; anywhere
  // else it becomes the query. A paste without files (text into the name field) is left alone.
  document.addEventListener('paste', (event) => {
    const files = pastedFiles(event);
    if (files.length === 0) {
      return;
    }
    event.preventDefault();
    if ($('species-form').contains(document.activeElement)) {
      addPendingPhotos(files);
    } else {
      chooseQuery(files);
    }
  });

  $('species-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('species-name').value.trim();
    enqueue(`Adding ${name || 'a species'}…`, addSpecies);
  });
  $('builtin-toggle').addEventListener('change', (event) => {
    const on = event.target.checked;
    enqueue(on ? 'Including the built-in species…' : 'Leaving out the built-in species…', () => setBuiltin(on));
  });
  $('classify-again').addEventListener('click', () => {
    const query = state.query;
    if (query) {
      enqueue(`Recognising ${query.name}…`, () => classify(query));
    }
  });
  $('backend-select').addEventListener('change', (event) => {
    const backend = event.target.value;
    enqueue(`Switching to ${BACKEND_NAMES[backend]}…`, () => switchBackend(backend));
  });
  $('message-dismiss').addEventListener('click', clearMessages);
}

// ---------------------------------------------------------------------------------------------
// Test hooks and start

/** Read-only view of the page state for people in the console and for the browser test. */
window.demo = {
  get ready() {
    return state.model !== null && state.running === 0;
  },
  get backend() {
    return state.backend;
  },
  get adapter() {
    return state.backend === 'webgpu' ? state.adapter : null;
  },
  get species() {
    return activeSpecies().map(({ name, builtin, photos }) => ({ name, builtin, photos }));
  },
  get lastResult() {
    const result = state.lastResult;
    return result ? { ...result, scores: result.scores.map(({ name, score }) => ({ name, score })) } : null;
  },
  get latency() {
    return { coldMs: state.latency.coldMs, warmMs: [...state.latency.warmMs], firstMs: state.latency.firstMs };
  },
  get messages() {
    return [...state.messages];
  },
  get queries() {
    return state.queries;
  },
  get actions() {
    return state.actions;
  },
};

async function start() {
  setUpInput();
  renderAll();
  const requested = new URLSearchParams(window.location.search).get('backend') || null;
  enqueue('Starting…', async () => {
    state.webgpuProblem = await probeWebGpu();
    let backend = state.webgpuProblem ? 'cpu' : 'webgpu';
    if (requested === 'cpu' || requested === 'webgpu') {
      backend = requested;
    } else if (requested !== null) {
      showMessage(`The URL asks for backend "${requested}", which does not exist; use backend=webgpu or backend=cpu.`);
    }
    await loadModel(backend);
  });
}

start();
