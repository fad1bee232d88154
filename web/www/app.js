// Page logic of the browser demo. It runs on the main thread and only handles the page: photos
// are decoded and embedded by worker.js, which owns the WebAssembly module, so the tab stays
// responsive while the model works.
//
// Every action that uses the model (adding or removing a species, choosing a query, switching
// the backend or the built-in species) becomes one task in a queue. Actions therefore never
// overlap, and `window.demo` describes a consistent state between them. What the user entered
// (a species name and its photos, the built-in checkbox, the backend menu) is read when they
// act, not when the queued task runs, so actions queued behind a slow one keep their own input.

/** Largest photo file accepted, in bytes, checked before the file is read or sent anywhere. */
const MAX_FILE_BYTES = 50 * 1000 * 1000;
/** Number of species shown in the result list; `window.demo.lastResult` keeps all of them. */
const TOP_K = 5;
const BACKEND_NAMES = { webgpu: 'WebGPU', cpu: 'CPU (WebAssembly)' };

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Worker client

/**
 * An error returned by the worker. `fatal` means the WebAssembly instance has to be replaced, and
 * `filesError` that a served file is missing or broken, so another backend would fail the same way.
 */
class WorkerError extends Error {
  constructor(message, fatal, filesError = false) {
    super(message);
    this.fatal = fatal;
    this.filesError = filesError;
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
      entry.reject(new WorkerError(data.error, data.fatal, data.filesError === true));
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
  /** The adapter's name without remarks, for messages. */
  adapterName: null,
  /** True when the only WebGPU adapter runs on the CPU (a fallback adapter such as SwiftShader). */
  adapterIsSoftware: false,
  /** Backend chosen in the menu whose switch is still queued, or null. */
  requestedBackend: null,
  /** True while a model load is in progress. */
  loading: false,
  /** Error message of the last failed model load, or null. */
  loadError: null,
  /** Number of built-in species in the last bundle loaded; null until a load succeeds. */
  builtinCount: null,
  /** Reason WebGPU is unavailable in this browser, or null when it is available. */
  webgpuProblem: null,
  /** The loaded bundle: {info, manifest, builtin (Float32Array), maxPixels}, or null. */
  model: null,
  /** Whether the built-in species take part; set as soon as the checkbox changes. */
  builtinOn: true,
  /**
   * Incremented whenever the species in use or their prototypes change, so a result computed
   * before the change can be recognised as out of date.
   */
  speciesVersion: 0,
  /** Species added on this page: {name, photos: [{name, bytes, url, embedding}], prototype}. */
  userSpecies: [],
  /** Files chosen for the next "Add species", not yet sent to the worker. */
  pendingPhotos: [],
  /** The query photo: {name, bytes, url}; url is set once the worker has accepted the photo. */
  query: null,
  /** The last classification, with the `speciesVersion` it was computed for, or null. */
  lastResult: null,
  /**
   * Latency since the last model load, in ms. The first query is cold and later ones are warm.
   * `firstMs` is the first photo of any kind, species or query, which also compiles the GPU shaders.
   */
  latency: { coldMs: null, warmMs: [], firstMs: null },
  messages: [],
  queries: 0,
  /**
   * Number of finished actions, so a test can wait for the one it started. An "Add species"
   * click rejected at once (no name or no photos) counts as an action that finished then.
   */
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
/** Status text of the action in progress, kept while later actions are queued behind it. */
let busyStatus = null;

/**
 * Runs `task` after every earlier action; errors it throws are shown as messages. The messages
 * of earlier actions are cleared now, when the user acts, so that a message that an action still
 * running shows later is not wiped by the tasks queued behind it.
 */
function enqueue(label, task) {
  clearMessages();
  state.running += 1;
  // While another action runs, the status keeps describing it and only counts this one as waiting.
  renderStatus(state.running === 1 ? label : undefined);
  queue = queue.then(async () => {
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

/** Shows the page's status; `busyText`, when given, replaces the text of the action in progress. */
function renderStatus(busyText) {
  const busy = state.running > 0;
  document.body.classList.toggle('busy', busy);
  $('status').setAttribute('aria-busy', String(busy));
  busyStatus = busy ? busyText || busyStatus : null;
  let text;
  if (busy) {
    text = busyStatus || 'Working…';
    if (state.running > 1) {
      text += ` (${state.running - 1} more action${state.running === 2 ? '' : 's'} waiting)`;
    }
  } else if (!state.model) {
    text = 'The model is not loaded; see the message below.';
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
  const name = info.description || [info.vendor, info.architecture, info.device].filter(Boolean).join(' ') || 'unnamed adapter';
  state.adapterIsSoftware = isSoftwareAdapter(adapter, name);
  state.adapter = state.adapterIsSoftware ? `${name} (software fallback adapter)` : name;
  state.adapterName = name;
  return null;
}

/**
 * Returns whether a WebGPU adapter runs on the CPU: the browser marks it as a fallback adapter,
 * or its name is that of a known software renderer (SwiftShader, Mesa's llvmpipe or lavapipe).
 */
function isSoftwareAdapter(adapter, name) {
  const info = adapter.info || {};
  // `GPUAdapter.isFallbackAdapter` is the older place of the flag that now sits in `adapter.info`.
  if (adapter.isFallbackAdapter || info.isFallbackAdapter) {
    return true;
  }
  return /swiftshader|llvmpipe|lavapipe/i.test(name);
}

/** Returns true when the last model load failed and no other load is in progress. */
function modelFailed() {
  return state.model === null && !state.loading && state.loadError !== null;
}

/** Returns the error shown when no backend can load the model, with what to do about it. */
function modelLoadError(detail) {
  return new Error(`The model could not be loaded: ${detail}. Rebuild with web/build.sh or check the server.`);
}

/**
 * Loads the model on `backend`, then re-embeds user photos. When WebGPU fails, it tries the CPU.
 * If that works, the failure was WebGPU's and a message names it. If the CPU fails too, the
 * model's files are at fault and only that error is shown. A failed download or a WebAssembly
 * module that does not start is a problem of the files, so the CPU is not tried then.
 */
async function loadModel(backend) {
  state.model = null;
  state.backend = null;
  state.loading = true;
  state.loadError = null;
  state.speciesVersion += 1;
  renderAll();
  try {
    const result = await loadOnBackendOrCpu(backend);
    state.model = result.model;
    state.backend = result.backend;
    state.builtinCount = result.model.info.species.length;
  } catch (error) {
    state.loadError = error.message;
    state.lastResult = null;
    throw error;
  } finally {
    state.loading = false;
  }
  state.latency = { coldMs: null, warmMs: [], firstMs: null };
  renderAll();
  await reembedUserSpecies();
  state.speciesVersion += 1;
}

/** Requests a load on `backend` and on the CPU after a WebGPU failure; returns {model, backend}. */
async function loadOnBackendOrCpu(backend) {
  renderStatus(`Loading the model on ${BACKEND_NAMES[backend]}…`);
  let firstError;
  try {
    return { model: await worker.request('load', { backend }), backend };
  } catch (error) {
    if (error.fatal) {
      restartWorker();
    }
    if (backend !== 'webgpu' || error.filesError) {
      throw modelLoadError(error.message);
    }
    firstError = error;
  }

  renderStatus(`Loading the model on WebGPU failed; trying ${BACKEND_NAMES.cpu}…`);
  let model;
  try {
    model = await worker.request('load', { backend: 'cpu' });
  } catch (cpuError) {
    if (cpuError.fatal) {
      restartWorker();
    }
    // The same error on both backends comes from the bundle, so WebGPU is not mentioned.
    if (cpuError.filesError || cpuError.message === firstError.message) {
      throw modelLoadError(cpuError.message);
    }
    throw modelLoadError(`on WebGPU, ${firstError.message}; on the CPU, ${cpuError.message}`);
  }
  showMessage(`Loading the model on WebGPU failed, so the page uses the CPU backend. Details: ${firstError.message}`);
  return { model, backend: 'cpu' };
}

function restartWorker() {
  worker.terminate();
  worker = new ModelWorker(showProgress);
}

/**
 * Shows `status`, sends an embed or classify request through `send` and records the time when it
 * is the first photo since the model was loaded. On WebGPU that photo also compiles the shaders,
 * so the status explains why it takes longer.
 */
async function timePhoto(status, send, op, fields) {
  if (state.latency.firstMs === null && state.backend === 'webgpu') {
    renderStatus(`${status.replace(/…$/, '')}. The first photo on WebGPU also compiles the shaders, which can take several seconds.`);
  } else {
    renderStatus(status);
  }
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
      const status = `Embedding your photos on ${BACKEND_NAMES[state.backend]}: ${done} of ${total}`;
      try {
        // Called on the worker directly: a crash here ends the reload instead of starting another.
        const { embedding } = await timePhoto(status, (op, fields) => worker.request(op, fields), 'embed', { bytes: photo.bytes });
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

/** Returns the name typed in the species form, trimmed and with single spaces. */
function typedSpeciesName() {
  return $('species-name').value.trim().replace(/\s+/g, ' ');
}

/**
 * Handles "Add species": reads the name and the chosen photos now, clears the form, and queues
 * the embedding. Input that cannot make a species is reported at once and left in the form.
 */
function submitSpecies() {
  const name = typedSpeciesName();
  const files = state.pendingPhotos;
  let problem = null;
  if (name === '') {
    problem = 'Enter the species name before adding its photos.';
  } else if (files.length === 0) {
    problem = `Add at least one photo of ${name} first: drop, paste or choose photos.`;
  } else if (modelFailed()) {
    problem = 'The model is not loaded, so no species can be added.';
  }
  if (problem !== null) {
    showMessage(problem);
    state.actions += 1;
    return;
  }
  state.pendingPhotos = [];
  $('species-name').value = '';
  renderPending();
  enqueue(`Adding ${name}…`, () => addSpecies(name, files));
}

/** Returns true when the ArrayBuffers `a` and `b` contain the same bytes. */
function sameBytes(a, b) {
  if (a.byteLength !== b.byteLength) {
    return false;
  }
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) {
      return false;
    }
  }
  return true;
}

/** Embeds `files` and adds them to the species `name`, creating it when it is new. */
async function addSpecies(name, files) {
  if (!state.model) {
    // The model failed to load while this action waited; give the input back to the form.
    state.pendingPhotos.push(...files);
    if ($('species-name').value.trim() === '') {
      $('species-name').value = name;
    }
    showMessage('The model is not loaded, so no species can be added.');
    return;
  }

  const existing = state.userSpecies.find((species) => nameKey(species.name) === nameKey(name));
  const known = existing ? [...existing.photos] : [];
  const usable = [];
  let duplicates = 0;
  for (const [index, file] of files.entries()) {
    const status = `Embedding photo ${index + 1} of ${files.length} of ${name}: ${file.name}`;
    renderStatus(status);
    const tooLarge = checkFileSize(file);
    if (tooLarge) {
      showMessage(`${tooLarge} It was left out of ${name}.`);
      continue;
    }
    try {
      const bytes = await file.arrayBuffer();
      // The same file twice would weigh twice in the prototype.
      if (known.some((photo) => photo.name === file.name && sameBytes(photo.bytes, bytes))) {
        showMessage(`${file.name} is already a photo of ${existing ? existing.name : name}, so it was added only once.`);
        duplicates += 1;
        continue;
      }
      const { embedding } = await timePhoto(status, request, 'embed', { bytes });
      const photo = { name: file.name, bytes, embedding, url: URL.createObjectURL(file) };
      usable.push(photo);
      known.push(photo);
    } catch (error) {
      showMessage(`${file.name} was left out of ${name}: ${error.message}`);
    }
  }
  if (usable.length === 0) {
    if (duplicates < files.length) {
      const count = files.length === 1 ? 'its only photo' : `any of its ${files.length} photos`;
      showMessage(`${name} was not ${existing ? 'changed' : 'added'}: the model could not use ${count}.`);
    }
    return;
  }

  if (existing && state.userSpecies.includes(existing)) {
    existing.photos.push(...usable);
    existing.prototype = meanEmbedding(existing.photos.map((photo) => photo.embedding));
  } else {
    state.userSpecies.push({ name, photos: usable, prototype: meanEmbedding(usable.map((photo) => photo.embedding)) });
  }
  state.speciesVersion += 1;
  renderSpecies();
  await reclassify();
}

async function removeSpecies(species) {
  state.userSpecies = state.userSpecies.filter((other) => other !== species);
  for (const photo of species.photos) {
    URL.revokeObjectURL(photo.url);
  }
  state.speciesVersion += 1;
  renderAll();
  await reclassify();
}

/**
 * Classifies the current query again after the species or the backend changed. With fewer than
 * 2 species, `classify` clears the old result and shows a message with the reason.
 */
async function reclassify() {
  if (state.query && state.model) {
    await classify(state.query);
  }
}

/** Drops the query and its result, after a query photo was rejected. */
function clearQuery() {
  setQuery(null);
  state.lastResult = null;
  renderResult();
}

async function classifyFile(file) {
  const tooLarge = checkFileSize(file);
  if (tooLarge) {
    showMessage(tooLarge);
    clearQuery();
    return;
  }
  let bytes;
  try {
    bytes = await file.arrayBuffer();
  } catch (error) {
    showMessage(`${file.name} could not be read: ${error.message}`);
    clearQuery();
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
  const speciesVersion = state.speciesVersion;
  if (species.length < 2) {
    showMessage(`${query.name} is waiting: recognition needs at least 2 species and there ${species.length === 1 ? 'is 1' : `are ${species.length}`}. Add species or include the built-in ones.`);
    state.lastResult = null;
    renderResult();
    return;
  }

  const dim = state.model.info.embeddingDim;
  const prototypes = new Float32Array(species.length * dim);
  species.forEach((entry, index) => prototypes.set(entry.prototype, index * dim));

  const backend = state.backend;
  const status = `Recognising ${query.name} on ${BACKEND_NAMES[backend]}…`;
  const started = performance.now();
  let reply;
  try {
    reply = await timePhoto(status, request, 'classify', { bytes: query.bytes, prototypes });
  } catch (error) {
    showMessage(`${query.name} could not be recognised: ${error.message}`);
    clearQuery();
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
  state.lastResult = { query: query.name, backend, predicted: scores[0].name, scores, ms, cold, speciesVersion };
  renderResult();
}

function setQuery(query) {
  if (state.query && state.query.url) {
    URL.revokeObjectURL(state.query.url);
  }
  state.query = query;
}

async function switchBackend(backend) {
  try {
    if (backend === state.backend && state.model) {
      return;
    }
    await loadModel(backend);
    await reclassify();
  } finally {
    // A later choice in the menu keeps its own queued switch; otherwise the menu shows the loaded backend.
    if (state.requestedBackend === backend) {
      state.requestedBackend = null;
    }
  }
}

/** Handles the built-in checkbox: the species change now, and only the new classification waits. */
function toggleBuiltin(on) {
  state.builtinOn = on;
  state.speciesVersion += 1;
  renderSpecies();
  renderResult();
  enqueue(on ? 'Including the built-in species…' : 'Leaving out the built-in species…', reclassify);
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
  if (state.backend) {
    label.textContent = BACKEND_NAMES[state.backend];
    adapter.textContent = state.backend === 'webgpu' && state.adapter ? `adapter: ${state.adapter}` : '';
  } else {
    label.textContent = modelFailed() ? 'not loaded' : 'loading…';
    adapter.textContent = '';
  }
  // While a switch waits in the queue, the menu keeps showing the user's choice.
  const select = $('backend-select');
  const selected = state.requestedBackend || state.backend;
  if (selected) {
    select.value = selected;
  }
  let webgpuOption = 'WebGPU';
  if (state.webgpuProblem) {
    webgpuOption = 'WebGPU (not available here)';
  } else if (state.adapterIsSoftware) {
    webgpuOption = 'WebGPU (software adapter, slower)';
  }
  select.querySelector('option[value="webgpu"]').textContent = webgpuOption;
  $('backend-note').textContent = backendNote();
}

/** Returns the note under the backend menu: why WebGPU is not used, or what it offers. */
function backendNote() {
  if (state.webgpuProblem) {
    return `WebGPU is not used: ${state.webgpuProblem}.`;
  }
  if (state.adapterIsSoftware && state.backend === 'cpu') {
    return `WebGPU is available only as a software adapter (${state.adapterName}), which is slower than the CPU backend; choose WebGPU in the menu to use it anyway.`;
  }
  if (state.adapterIsSoftware && state.backend === 'webgpu') {
    return `This WebGPU adapter (${state.adapterName}) runs on the CPU, so it is slower than the CPU backend.`;
  }
  if (state.backend === 'cpu') {
    return 'This browser offers WebGPU too; choose it in the menu to run the model on the GPU.';
  }
  return '';
}

function renderSpecies() {
  // The checkbox is shown once a bundle has been loaded, because its label needs the bundle's
  // species count, and it is disabled while no model is loaded after a failure.
  const builtinCount = state.builtinCount;
  $('builtin-count').textContent = String(builtinCount ?? 0);
  $('builtin-row').hidden = builtinCount === null || builtinCount === 0;
  $('builtin-toggle').disabled = modelFailed();
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
      thumbs.append(thumbnail(photo));
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

/**
 * Returns the thumbnail of a species photo. The model decodes formats that browsers cannot show
 * (TIFF in most of them), so an image that fails to display becomes a box with the file name.
 */
function thumbnail(photo) {
  const image = element('img', 'thumb');
  image.alt = photo.name;
  image.title = photo.name;
  image.decoding = 'async';
  image.addEventListener('error', () => image.replaceWith(previewPlaceholder('thumb', photo.name)), { once: true });
  image.src = photo.url;
  return image;
}

/** Returns a neutral box naming a photo whose format the browser cannot display. */
function previewPlaceholder(className, name) {
  const box = element('div', `${className} no-preview`);
  box.title = `${name}: this browser cannot show this format, but the model has read it.`;
  box.append(element('span', null, name));
  return box;
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
  const placeholder = $('query-placeholder');
  if (query && query.url) {
    // The error handler (set up in setUpInput) shows the placeholder when the format cannot be shown.
    if (preview.getAttribute('src') !== query.url) {
      preview.src = query.url;
      preview.hidden = false;
      placeholder.hidden = true;
    }
    preview.alt = query.name;
    placeholder.querySelector('span').textContent = query.name;
  } else {
    preview.removeAttribute('src');
    preview.hidden = true;
    placeholder.hidden = true;
  }
  $('query-name').textContent = query ? query.name : 'No photo chosen yet.';
  $('classify-again').disabled = !query;

  const result = state.lastResult;
  const body = $('result-body');
  body.replaceChildren();
  const outOfDate = result !== null && result.speciesVersion !== state.speciesVersion;
  // With a loaded model and fewer than 2 species, or without a model after a failed load, no new
  // result can replace an old one, so the old one is hidden rather than marked.
  const impossible = state.model ? activeSpecies().length < 2 : modelFailed();
  body.classList.toggle('out-of-date', outOfDate);
  if (!result || (outOfDate && impossible)) {
    body.append(element('p', 'placeholder', 'The prediction appears here.'));
  } else {
    if (outOfDate) {
      const next = state.running > 0
        ? 'It is updated when the page is ready.'
        : 'Choose "Classify again" to update it.';
      body.append(element('p', 'stale', `Out of date: the species changed after this result. ${next}`));
    }
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
    const note = element(
      'p',
      'score-note',
      "Scores are the model's softmax over the distances to each species' prototype, not calibrated " +
        'probabilities. A small network such as the shipped Conv4 is often confidently wrong, so ' +
        '100 % means the closest prototype by far, not certainty.',
    );
    body.append(headline, list, note, details);
  }
  renderLatency();
}

function renderLatency() {
  const latency = state.latency;
  const warm = latency.warmMs;
  $('latency-backend').textContent = state.backend ? BACKEND_NAMES[state.backend] : '–';
  $('latency-first-label').textContent = state.backend === 'webgpu'
    ? 'First photo after loading (includes compiling the shaders)'
    : 'First photo after loading';
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

/**
 * Names that browsers give to image data pasted without a file behind it, such as a screenshot
 * (Chromium 156 names it "image.png"), rather than a real file name.
 */
const GENERIC_PASTE_NAME = /^(image|blob|untitled)?(\.[a-z0-9]+)?$/i;
/** File name extensions for the image types that a paste can carry. */
const EXTENSIONS = {
  'image/jpeg': 'jpg',
  'image/png': 'png',
  'image/gif': 'gif',
  'image/webp': 'webp',
  'image/bmp': 'bmp',
  'image/tiff': 'tif',
  'image/avif': 'avif',
  'image/svg+xml': 'svg',
};

/**
 * Returns the files of a paste. A file with a real name keeps it. One with a generic name becomes
 * pasted-image-N with the extension of its MIME type, so that photos from several pastes get
 * distinct names.
 */
function pastedFiles(event) {
  const files = [...(event.clipboardData ? event.clipboardData.files : [])];
  return files.map((file) => {
    if (!GENERIC_PASTE_NAME.test(file.name)) {
      return file;
    }
    state.pastedCount += 1;
    const extension = EXTENSIONS[file.type] || 'bin';
    return new File([file], `pasted-image-${state.pastedCount}.${extension}`, { type: file.type, lastModified: file.lastModified });
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
    submitSpecies();
  });
  $('builtin-toggle').addEventListener('change', (event) => toggleBuiltin(event.target.checked));
  $('classify-again').addEventListener('click', () => {
    const query = state.query;
    if (query) {
      enqueue(`Recognising ${query.name}…`, () => classify(query));
    }
  });
  $('backend-select').addEventListener('change', (event) => {
    const backend = event.target.value;
    state.requestedBackend = backend;
    enqueue(`Switching to ${BACKEND_NAMES[backend]}…`, () => switchBackend(backend));
  });
  $('message-dismiss').addEventListener('click', clearMessages);
  $('query-preview').addEventListener('error', () => {
    // Set only while a query is shown: the browser cannot display this format (TIFF, mostly).
    if ($('query-preview').getAttribute('src')) {
      $('query-preview').hidden = true;
      $('query-placeholder').hidden = false;
    }
  });
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
    if (!result) {
      return null;
    }
    const scores = result.scores.map(({ name, score }) => ({ name, score }));
    return { ...result, scores, outOfDate: result.speciesVersion !== state.speciesVersion };
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
    // A software adapter runs WebGPU on the CPU, so it is used only on request: with Chromium 156's
    // SwiftShader, web/tests/browser.mjs measured a warm query at about 13 times the CPU backend's time.
    let backend = state.webgpuProblem || state.adapterIsSoftware ? 'cpu' : 'webgpu';
    if (requested === 'cpu' || requested === 'webgpu') {
      backend = requested;
    } else if (requested !== null) {
      showMessage(`The URL asks for backend "${requested}", which does not exist; use backend=webgpu or backend=cpu.`);
    }
    await loadModel(backend);
  });
}

start();
