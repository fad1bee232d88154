// The module Web Worker that owns the WebAssembly module. It downloads the model bundle, loads
// it on the requested backend, and decodes and embeds photos, so neither the downloads nor the
// image decoding and inference run on the page's main thread.
//
// Protocol (app.js is the only client):
//   request  {id, op: "load", backend}                 -> {info, manifest, builtin, maxPixels}
//   request  {id, op: "embed", bytes}                  -> {embedding}
//   request  {id, op: "classify", bytes, prototypes}   -> {embedding, scores}
//   reply    {id, ok: true, result} or {id, ok: false, error, fatal, filesError}
//   progress {id, progress: text} while a load downloads the bundle
// `fatal: true` means the WebAssembly instance is unusable (a Rust panic or a trap), so the page
// must terminate this worker and start a new one. `filesError: true` means a served file is
// missing or broken (a model download failed, or the WebAssembly module could not start), so
// loading on another backend cannot help. Requests run one at a time, in arrival order,
// because the module keeps a single model and its asynchronous calls must not interleave.

import init, { load, embed, scores, builtinPrototypes, maxPixels } from './pkg/metairnet_web.js';

const MODEL_FILES = {
  manifest: new URL('./model/model.json', import.meta.url),
  weights: new URL('./model/backbone.bpk', import.meta.url),
  prototypes: new URL('./model/prototypes.f32', import.meta.url),
};

// The Rust panic hook writes "metairnet-web panicked: ..." through console.error just before the
// instance traps. Keeping the line lets the reply contain the panic message, not "unreachable".
let lastPanic = null;
const consoleError = console.error.bind(console);
console.error = (...args) => {
  const text = args.map(String).join(' ');
  if (text.startsWith('metairnet-web panicked')) {
    lastPanic = text;
  }
  consoleError(...args);
};

/** An error caused by the served files rather than by the backend. */
class FilesError extends Error {}

// Set once the instance has trapped; every later request fails fast with the same reason.
let brokenReason = null;
// Id of the request being handled, so that an uncaught trap can still get a reply.
let currentId = null;
// The bundle's bytes, downloaded once per worker and reused when the backend changes.
let bundle = null;

const moduleReady = init({
  module_or_path: new URL('./pkg/metairnet_web_bg.wasm', import.meta.url),
});
// Requests report a failed start themselves; this keeps it from counting as an uncaught error.
moduleReady.catch(() => {});

function isTrap(error) {
  return error instanceof WebAssembly.RuntimeError || lastPanic !== null;
}

function describeTrap(error) {
  if (lastPanic !== null) {
    return lastPanic;
  }
  return `the WebAssembly module crashed (${error && error.message ? error.message : error})`;
}

function fail(id, error) {
  if (isTrap(error)) {
    brokenReason = brokenReason || describeTrap(error);
    self.postMessage({ id, ok: false, error: brokenReason, fatal: true });
    return;
  }
  const text = error && error.message ? error.message : String(error);
  self.postMessage({ id, ok: false, error: text, fatal: false, filesError: error instanceof FilesError });
}

// A trap inside a future that wasm-bindgen polls from a microtask surfaces here instead of
// rejecting the request's promise, so without these handlers the request would never get a reply.
function onUncaught(error) {
  if (currentId === null) {
    brokenReason = brokenReason || describeTrap(error);
    self.postMessage({ id: null, ok: false, error: brokenReason, fatal: true });
    return;
  }
  const id = currentId;
  currentId = null;
  brokenReason = brokenReason || describeTrap(error);
  self.postMessage({ id, ok: false, error: brokenReason, fatal: true });
}

self.addEventListener('error', (event) => {
  event.preventDefault();
  onUncaught(event.error || event.message);
});
self.addEventListener('unhandledrejection', (event) => {
  event.preventDefault();
  onUncaught(event.reason);
});

async function download(url, id, label) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new FilesError(`downloading ${label} failed (${error.message}); check that the server is running`);
  }
  if (!response.ok) {
    throw new FilesError(`downloading ${label} failed: HTTP ${response.status} for ${url.pathname}`);
  }
  // With a Content-Encoding such as gzip, Content-Length counts compressed bytes while the body
  // yields decompressed ones, so progress is only shown for uncompressed responses.
  const encoding = response.headers.get('content-encoding');
  const total = Number(response.headers.get('content-length')) || 0;
  if (!response.body || total === 0 || (encoding && encoding !== 'identity')) {
    return new Uint8Array(await response.arrayBuffer());
  }

  // Read in chunks so the page can show how much of a large weights file has arrived.
  const reader = response.body.getReader();
  const bytes = new Uint8Array(total);
  let received = 0;
  let lastReport = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      break;
    }
    if (received + value.length > total) {
      throw new FilesError(`downloading ${label} failed: the server sent more than its ${total}-byte Content-Length`);
    }
    bytes.set(value, received);
    received += value.length;
    if (received - lastReport > total / 20 || received === total) {
      lastReport = received;
      const mb = (n) => (n / 1e6).toFixed(1);
      self.postMessage({ id, progress: `Downloading ${label}: ${mb(received)} of ${mb(total)} MB` });
    }
  }
  if (received !== total) {
    throw new FilesError(`downloading ${label} failed: got ${received} of ${total} bytes`);
  }
  return bytes;
}

async function fetchBundle(id) {
  if (bundle !== null) {
    return bundle;
  }
  const manifestBytes = await download(MODEL_FILES.manifest, id, 'the model manifest');
  const manifestJson = new TextDecoder().decode(manifestBytes);
  const weights = await download(MODEL_FILES.weights, id, 'the model weights');
  const prototypes = await download(MODEL_FILES.prototypes, id, 'the built-in prototypes');
  bundle = { manifestJson, weights, prototypes };
  return bundle;
}

async function handleLoad(id, backend) {
  const { manifestJson, weights, prototypes } = await fetchBundle(id);
  self.postMessage({ id, progress: `Loading the model on ${backend === 'webgpu' ? 'WebGPU' : 'the CPU'}` });
  // `load` copies the byte arrays into WebAssembly memory, so the cached bundle stays intact
  // for a later load on the other backend.
  const info = JSON.parse(await load(backend, manifestJson, weights, prototypes));
  return {
    info,
    manifest: JSON.parse(manifestJson),
    builtin: builtinPrototypes(),
    maxPixels: maxPixels(),
  };
}

async function handleClassify(bytes, prototypes) {
  const embedding = await embed(new Uint8Array(bytes));
  const probabilities = scores(embedding, prototypes);
  return { embedding, scores: probabilities };
}

async function handle(message) {
  const { id, op } = message;
  if (brokenReason !== null) {
    self.postMessage({ id, ok: false, error: brokenReason, fatal: true });
    return;
  }
  currentId = id;
  try {
    await moduleReady.catch((error) => {
      throw new FilesError(`the WebAssembly module could not be started (${error.message}); check that pkg/ was built and is served`);
    });
    let result;
    if (op === 'load') {
      result = await handleLoad(id, message.backend);
    } else if (op === 'embed') {
      result = { embedding: await embed(new Uint8Array(message.bytes)) };
    } else if (op === 'classify') {
      result = await handleClassify(message.bytes, message.prototypes);
    } else {
      throw new Error(`unknown request ${JSON.stringify(op)}`);
    }
    if (currentId === id) {
      self.postMessage({ id, ok: true, result });
    }
  } catch (error) {
    if (currentId === id) {
      fail(id, error);
    }
  } finally {
    if (currentId === id) {
      currentId = null;
    }
  }
}

// Chain the requests so that each one starts after the previous one has had its reply.
let queue = Promise.resolve();
self.addEventListener('message', (event) => {
  const message = event.data;
  queue = queue.then(() => handle(message));
});
