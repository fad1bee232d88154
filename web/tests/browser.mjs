#!/usr/bin/env node
// End-to-end test of the browser demo: serves a built demo folder on 127.0.0.1, drives the
// system Chromium through playwright-core, and checks the page on each backend.
//
//   node web/tests/browser.mjs --dist DIR --support DIR --query FILE [--query FILE ...]
//       --bad DIR --out DIR [--chromium /usr/bin/chromium] [--backends webgpu,cpu]
//
// --support contains one subfolder of photos per species (the subfolder name is the species name),
// --query the photos to recognise, and --bad files the page must reject with a message. The test
// writes OUT/results.json (scores for the Rust test to compare with `metairnet classify`) and
// OUT/page-BACKEND.png, and exits 0 only when every check passes on every backend.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { createReadStream, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, extname, join, resolve, sep } from 'node:path';
import { parseArgs } from 'node:util';

/** Time allowed for one page action, generous because software WebGPU compiles shaders slowly. */
const ACTION_TIMEOUT_MS = 10 * 60 * 1000;
/** Time allowed for the first model load, which downloads the bundle and starts the backend. */
const LOAD_TIMEOUT_MS = 10 * 60 * 1000;
/** Largest difference allowed between scores of the same photo classified twice. */
const REPEAT_TOLERANCE = 1e-4;
/** Period of the main-thread timer that checks that the page stays responsive. */
const TIMER_MS = 50;
/** Maximum gap between two ticks of that timer, with room for a loaded CI machine. */
const MAX_MAIN_THREAD_GAP_MS = 1000;

const MIME_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.bpk': 'application/octet-stream',
  '.f32': 'application/octet-stream',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

// Flags that keep Chromium off the network and turn WebGPU on. In headless mode, Debian's
// Chromium 156 then offers a SwiftShader WebGPU adapter, so --use-angle and Vulkan flags are not needed.
const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--disable-quic',
  '--no-sandbox',
];

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) {
    throw new CheckFailed(message);
  }
}

function log(text) {
  console.log(`[browser-test] ${text}`);
}

function parseOptions() {
  const usage =
    'usage: node web/tests/browser.mjs --dist DIR --support DIR --query FILE [--query FILE ...] ' +
    '--bad DIR --out DIR [--chromium PATH] [--backends webgpu,cpu]';
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        dist: { type: 'string' },
        support: { type: 'string' },
        query: { type: 'string', multiple: true },
        bad: { type: 'string' },
        out: { type: 'string' },
        chromium: { type: 'string', default: '/usr/bin/chromium' },
        backends: { type: 'string', default: 'webgpu,cpu' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    throw new CheckFailed(`${error.message}\n${usage}`);
  }
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  for (const name of ['dist', 'support', 'query', 'bad', 'out']) {
    check(values[name] !== undefined, `missing --${name}\n${usage}`);
  }
  const backends = values.backends.split(',').map((name) => name.trim()).filter(Boolean);
  for (const backend of backends) {
    check(backend === 'webgpu' || backend === 'cpu', `invalid backend "${backend}" in --backends; expected webgpu and/or cpu`);
  }
  return {
    dist: resolve(values.dist),
    support: resolve(values.support),
    queries: values.query.map((file) => resolve(file)),
    bad: resolve(values.bad),
    out: resolve(values.out),
    chromium: values.chromium,
    backends,
  };
}

/** Returns the support species, one per subfolder, sorted by name, each with its photo paths. */
function readSupport(dir) {
  const species = readdirSync(dir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => entry.name)
    .sort()
    .map((name) => {
      const folder = join(dir, name);
      const photos = readdirSync(folder)
        .filter((file) => statSync(join(folder, file)).isFile())
        .sort()
        .map((file) => join(folder, file));
      return { name, photos };
    });
  check(species.length >= 2, `--support ${dir} has ${species.length} species subfolders; the page needs at least 2`);
  for (const entry of species) {
    check(entry.photos.length > 0, `support species ${entry.name} has no photos in ${join(dir, entry.name)}`);
  }
  return species;
}

function checkInputs(options) {
  check(statSync(options.dist, { throwIfNoEntry: false })?.isDirectory(), `--dist ${options.dist} is not a folder`);
  for (const file of ['index.html', 'app.js', 'worker.js', 'pkg/metairnet_web.js', 'pkg/metairnet_web_bg.wasm', 'model/model.json']) {
    check(statSync(join(options.dist, file), { throwIfNoEntry: false })?.isFile(), `--dist ${options.dist} has no ${file}; build it with web/build.sh`);
  }
  for (const query of options.queries) {
    check(statSync(query, { throwIfNoEntry: false })?.isFile(), `--query ${query} is not a file`);
  }
  check(statSync(options.chromium, { throwIfNoEntry: false })?.isFile(), `Chromium not found at ${options.chromium}; pass --chromium PATH`);
}

/** Starts a static file server for `root` on a free port of 127.0.0.1. */
async function serve(root) {
  const server = createServer((request, response) => {
    let path;
    try {
      path = decodeURIComponent(new URL(request.url, 'http://127.0.0.1').pathname);
    } catch {
      response.writeHead(400).end('invalid URL');
      return;
    }
    if (path.endsWith('/')) {
      path += 'index.html';
    }
    const file = resolve(root, `.${path}`);
    if (file !== root && !file.startsWith(root + sep)) {
      response.writeHead(403).end('outside the served folder');
      return;
    }
    const stats = statSync(file, { throwIfNoEntry: false });
    if (!stats || !stats.isFile()) {
      response.writeHead(404).end('not found');
      return;
    }
    response.writeHead(200, {
      'Content-Type': MIME_TYPES[extname(file)] || 'application/octet-stream',
      'Content-Length': stats.size,
    });
    createReadStream(file).pipe(response);
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', ok);
  });
  return server;
}

/** Forwards the page's and its worker's console errors, uncaught errors and failed requests. */
function forwardPageErrors(page, backend) {
  page.on('console', (message) => {
    const type = message.type();
    if (type === 'error' || type === 'warning') {
      const where = message.worker() ? 'worker' : 'page';
      console.log(`[${backend} ${where} console.${type}] ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => console.log(`[${backend} page error] ${error.message}`));
  page.on('worker', (worker) => {
    worker.on('close', () => console.log(`[${backend}] worker closed: ${worker.url()}`));
  });
  page.on('requestfailed', (request) => {
    console.log(`[${backend} request failed] ${request.url()}: ${request.failure()?.errorText}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400) {
      console.log(`[${backend} HTTP ${response.status()}] ${response.url()}`);
    }
  });
}

async function demoState(page) {
  return page.evaluate(() => ({
    ready: window.demo.ready,
    backend: window.demo.backend,
    adapter: window.demo.adapter,
    species: window.demo.species,
    lastResult: window.demo.lastResult,
    latency: window.demo.latency,
    messages: window.demo.messages,
    queries: window.demo.queries,
    actions: window.demo.actions,
    status: document.getElementById('status-text').textContent,
  }));
}

/** Runs `act` and waits until the page has finished the action it started and is idle again. */
async function runAction(page, description, act) {
  const before = await page.evaluate(() => window.demo.actions);
  await act();
  try {
    await page.waitForFunction((count) => window.demo.actions > count && window.demo.ready, before, {
      timeout: ACTION_TIMEOUT_MS,
      polling: 100,
    });
  } catch (error) {
    const current = await demoState(page).catch(() => null);
    throw new CheckFailed(
      `${description}: the page did not finish within ${ACTION_TIMEOUT_MS / 1000} s ` +
        `(status: ${current?.status}; messages: ${JSON.stringify(current?.messages)}; ${error.message.split('\n')[0]})`,
    );
  }
  return demoState(page);
}

async function classifyFile(page, file) {
  return runAction(page, `classifying ${basename(file)}`, () => page.setInputFiles('#query-file', file));
}

async function classifyAgain(page, name) {
  return runAction(page, `classifying ${name} again`, () => page.click('#classify-again'));
}

/** Returns a new page-level failure unless the result is a fresh classification of `file`. */
function checkResult(state, file, queriesBefore, backend) {
  const name = basename(file);
  check(
    state.queries === queriesBefore + 1,
    `classifying ${name} did not produce one new result (queries ${queriesBefore} -> ${state.queries}; messages: ${JSON.stringify(state.messages.slice(-3))})`,
  );
  check(state.lastResult && state.lastResult.query === name, `the last result is for ${state.lastResult?.query}, expected ${name}`);
  check(state.lastResult.backend === backend, `${name} was classified on ${state.lastResult.backend}, expected ${backend}`);
  const total = state.lastResult.scores.reduce((sum, entry) => sum + entry.score, 0);
  check(Math.abs(total - 1) < 1e-3, `the scores of ${name} sum to ${total}, expected 1`);
  for (let i = 1; i < state.lastResult.scores.length; i++) {
    check(state.lastResult.scores[i - 1].score >= state.lastResult.scores[i].score, `the scores of ${name} are not sorted`);
  }
  check(state.lastResult.predicted === state.lastResult.scores[0].name, `the prediction of ${name} is not its top score`);
}

function maxScoreDifference(a, b) {
  const byName = new Map(b.map((entry) => [entry.name, entry.score]));
  let max = 0;
  for (const entry of a) {
    check(byName.has(entry.name), `species ${entry.name} is missing from a repeated result`);
    max = Math.max(max, Math.abs(entry.score - byName.get(entry.name)));
  }
  return max;
}

async function addSpecies(page, name, photos) {
  return runAction(page, `adding species ${name}`, async () => {
    await page.fill('#species-name', name);
    await page.setInputFiles('#species-files', photos);
    await page.click('#add-species');
  });
}

/** Checks that a bad file produced a new message in #message that names it. */
async function checkRejected(page, state, messagesBefore, file, as) {
  const name = basename(file);
  const added = state.messages.slice(messagesBefore);
  const naming = added.filter((message) => message.includes(name));
  check(naming.length > 0, `bad file ${name} as a ${as} produced no message naming it (new messages: ${JSON.stringify(added)})`);
  const messageText = await page.locator('#message').innerText();
  check(await page.locator('#message').isVisible(), `the message for bad file ${name} (${as}) is not visible`);
  check(messageText.includes(name), `#message does not name ${name} after it was used as a ${as}: ${JSON.stringify(messageText)}`);
  return naming.join(' | ');
}

/** Runs every check on one backend, filling `result` as it goes so a failure keeps what passed. */
async function testBackend(context, baseUrl, backend, options, support, builtinNames, result) {
  const page = await context.newPage();
  forwardPageErrors(page, backend);
  try {
    await runBackendChecks(page, baseUrl, backend, options, support, builtinNames, result);
  } finally {
    await page.close().catch(() => {});
  }
}

async function runBackendChecks(page, baseUrl, backend, options, support, builtinNames, result) {
  // Load: the page must run on the requested backend, without a silent fallback.
  const started = Date.now();
  await page.goto(`${baseUrl}/index.html?backend=${backend}`);
  try {
    await page.waitForFunction(() => window.demo && window.demo.ready, null, { timeout: LOAD_TIMEOUT_MS, polling: 250 });
  } catch (error) {
    const current = await demoState(page).catch(() => null);
    throw new CheckFailed(`the model did not load on ${backend} within ${LOAD_TIMEOUT_MS / 1000} s (status: ${current?.status}; messages: ${JSON.stringify(current?.messages)})`);
  }
  let state = await demoState(page);
  log(`${backend}: model loaded in ${((Date.now() - started) / 1000).toFixed(1)} s; adapter: ${state.adapter}`);
  check(state.backend === backend, `the page runs on ${state.backend} but ${backend} was requested (messages: ${JSON.stringify(state.messages)})`);
  result.adapter = state.adapter;
  check(state.messages.length === 0, `loading on ${backend} showed messages: ${JSON.stringify(state.messages)}`);
  check((await page.title()) === 'One-shot bird recognition (MetaIRNet)', `unexpected page title ${JSON.stringify(await page.title())}`);
  check(state.species.length === builtinNames.length, `the page starts with ${state.species.length} species, expected the ${builtinNames.length} built-in ones`);

  // From here on, a timer on the main thread records its longest gap: decoding and inference run
  // in the worker, so the page must stay responsive while photos are embedded.
  await page.evaluate((timerMs) => {
    const gap = { maxMs: 0, last: performance.now() };
    window.mainThreadGap = gap;
    setInterval(() => {
      const now = performance.now();
      gap.maxMs = Math.max(gap.maxMs, now - gap.last);
      gap.last = now;
    }, timerMs);
  }, TIMER_MS);

  // Leave out the built-in species and add the support species.
  if (builtinNames.length > 0) {
    state = await runAction(page, 'unchecking the built-in species', () => page.uncheck('#builtin-toggle'));
    check(state.species.length === 0, `with the built-in species off the page still uses ${state.species.length} species`);
  }
  for (const species of support) {
    state = await addSpecies(page, species.name, species.photos);
    const added = state.species.find((entry) => entry.name === species.name);
    check(added, `species ${species.name} was not added (messages: ${JSON.stringify(state.messages)})`);
    check(added.photos === species.photos.length, `species ${species.name} has ${added.photos} photos, expected ${species.photos.length}`);
    check(!added.builtin, `species ${species.name} is marked built-in`);
  }
  check(state.species.length === support.length, `the page uses ${state.species.length} species, expected the ${support.length} support species`);
  log(`${backend}: added ${support.length} species (${support.map((s) => `${s.name}: ${s.photos.length}`).join(', ')})`);

  // Queries: the first is cold; the first query is then classified 3 more times, warm.
  const firstResults = new Map();
  for (const [index, file] of options.queries.entries()) {
    const before = state.queries;
    state = await classifyFile(page, file);
    checkResult(state, file, before, backend);
    check(state.lastResult.cold === (index === 0), `query ${index + 1} (${basename(file)}) has cold=${state.lastResult.cold}`);
    check(state.lastResult.scores.length === support.length, `${basename(file)} got ${state.lastResult.scores.length} scores, expected ${support.length}`);
    firstResults.set(file, state.lastResult);
    result.queries.push({ file: basename(file), predicted: state.lastResult.predicted, scores: state.lastResult.scores, ms: state.lastResult.ms });
    log(`${backend}: ${basename(file)} -> ${state.lastResult.predicted} (${(state.lastResult.scores[0].score * 100).toFixed(1)} %, ${state.lastResult.ms.toFixed(0)} ms${index === 0 ? ', cold' : ''})`);
  }
  const first = options.queries[0];
  const reference = firstResults.get(first);
  for (let repeat = 0; repeat < 3; repeat++) {
    const before = state.queries;
    // The first repeat chooses the file again, the others use the button.
    state = repeat === 0 ? await classifyFile(page, first) : await classifyAgain(page, basename(first));
    checkResult(state, first, before, backend);
    check(!state.lastResult.cold, `repeat ${repeat + 1} of ${basename(first)} is marked cold`);
    check(state.lastResult.predicted === reference.predicted, `repeat ${repeat + 1} of ${basename(first)} predicted ${state.lastResult.predicted}, first ${reference.predicted}`);
    const difference = maxScoreDifference(reference.scores, state.lastResult.scores);
    check(difference <= REPEAT_TOLERANCE, `repeat ${repeat + 1} of ${basename(first)} changed a score by ${difference}`);
  }
  result.coldMs = state.latency.coldMs;
  result.warmMs = state.latency.warmMs;
  check(typeof result.coldMs === 'number', `no cold latency was recorded: ${JSON.stringify(state.latency)}`);
  check(result.warmMs.length === options.queries.length - 1 + 3, `expected ${options.queries.length + 2} warm latencies, got ${JSON.stringify(result.warmMs)}`);

  // Bad input, as a query and as a species photo: each needs a message naming the file.
  const badFiles = readdirSync(options.bad)
    .sort()
    .map((file) => join(options.bad, file))
    .filter((file) => statSync(file).isFile());
  check(badFiles.length > 0, `--bad ${options.bad} has no files`);
  const speciesBefore = state.species.length;
  for (const file of badFiles) {
    let before = state.messages.length;
    state = await classifyFile(page, file);
    const asQuery = await checkRejected(page, state, before, file, 'query');
    check(state.lastResult === null || state.lastResult.query !== basename(file), `bad file ${basename(file)} was classified`);
    result.badInput.push({ file: basename(file), as: 'query', message: asQuery });

    before = state.messages.length;
    state = await addSpecies(page, `bad input ${basename(file)}`, [file]);
    const asSpecies = await checkRejected(page, state, before, file, 'species photo');
    check(state.species.length === speciesBefore, `bad file ${basename(file)} added a species (${state.species.length} species, expected ${speciesBefore})`);
    result.badInput.push({ file: basename(file), as: 'species', message: asSpecies });
    log(`${backend}: rejected ${basename(file)}: ${asQuery}`);
  }

  // The page keeps working after bad input and gives the same prediction.
  let before = state.queries;
  state = await classifyFile(page, first);
  checkResult(state, first, before, backend);
  check(state.lastResult.predicted === reference.predicted, `after the bad input ${basename(first)} predicted ${state.lastResult.predicted}, before ${reference.predicted}`);
  const difference = maxScoreDifference(reference.scores, state.lastResult.scores);
  check(difference <= REPEAT_TOLERANCE, `after the bad input a score of ${basename(first)} changed by ${difference}`);

  // Built-in species again: a user species with a built-in's name replaces that built-in one.
  if (builtinNames.length > 0) {
    const userKeys = new Set(support.map((species) => species.name.trim().toLowerCase()));
    const expected = builtinNames.filter((name) => !userKeys.has(name.trim().toLowerCase())).length + support.length;
    state = await runAction(page, 'checking the built-in species', () => page.check('#builtin-toggle'));
    check(state.species.length === expected, `with the built-in species on the page uses ${state.species.length} species, expected ${expected}`);
    before = state.queries;
    state = await classifyAgain(page, basename(first));
    checkResult(state, first, before, backend);
    check(state.lastResult.scores.length === expected, `with the built-in species ${basename(first)} got ${state.lastResult.scores.length} scores, expected ${expected}`);
    const builtinScored = state.lastResult.scores.filter((entry) => builtinNames.includes(entry.name)).length;
    check(builtinScored > 0, 'no built-in species appears in the scores');
    result.withBuiltin = { predicted: state.lastResult.predicted, count: state.lastResult.scores.length, scores: state.lastResult.scores };
  } else {
    log(`${backend}: the bundle has no built-in species; skipping that check`);
  }
  check((await page.locator('#result').innerText()).includes(state.lastResult.predicted), '#result does not show the prediction');
  check((await page.locator('#backend-label').innerText()).length > 0, '#backend-label is empty');

  result.mainThreadMaxGapMs = await page.evaluate(() => window.mainThreadGap.maxMs);
  check(
    result.mainThreadMaxGapMs <= MAX_MAIN_THREAD_GAP_MS,
    `the page's main thread stalled for ${result.mainThreadMaxGapMs.toFixed(0)} ms (limit ${MAX_MAIN_THREAD_GAP_MS} ms) while photos were decoded and classified`,
  );
  log(`${backend}: longest main-thread gap ${result.mainThreadMaxGapMs.toFixed(0)} ms (timer every ${TIMER_MS} ms)`);

  const shot = join(options.out, `page-${backend}.png`);
  await page.screenshot({ path: shot, fullPage: true });
  log(`${backend}: screenshot ${shot}`);
  state = await demoState(page);
  result.coldMs = state.latency.coldMs;
  result.warmMs = state.latency.warmMs;
  result.firstPhotoMs = state.latency.firstMs;

  await checkQueuedSpeciesChanges(page, support, builtinNames);
}

/** Waits until the page has finished `count` actions after `before` and is idle again. */
async function waitForActions(page, before, count, description) {
  try {
    await page.waitForFunction(({ before, count }) => window.demo.actions >= before + count && window.demo.ready, { before, count }, {
      timeout: ACTION_TIMEOUT_MS,
      polling: 100,
    });
  } catch (error) {
    const current = await demoState(page).catch(() => null);
    throw new CheckFailed(`${description}: the page did not finish within ${ACTION_TIMEOUT_MS / 1000} s (status: ${current?.status}; messages: ${JSON.stringify(current?.messages)})`);
  }
  return demoState(page);
}

/**
 * Removes all support species but the first, then adds them back with one click each in the same
 * task, so every "Add species" but the first waits in the queue. Each must keep the name and the
 * photos of its own click, and a result must not outlive the species it was computed for.
 */
async function checkQueuedSpeciesChanges(page, support, builtinNames) {
  let before = await page.evaluate(() => window.demo.actions);
  let count = 0;
  if (builtinNames.length > 0) {
    await page.uncheck('#builtin-toggle');
    count += 1;
  }
  for (const species of support.slice(1)) {
    await page.click(`button.remove-species[data-name="${species.name}"]`);
    count += 1;
  }
  let state = await waitForActions(page, before, count, 'removing all support species but one');
  check(state.species.length === 1, `after the removals the page uses ${state.species.length} species, expected 1`);
  check(state.lastResult === null, `with 1 species the result for ${state.lastResult?.predicted} is still kept`);
  const resultText = await page.locator('#result-body').innerText();
  check(!resultText.includes('Predicted'), `with 1 species #result-body still shows a prediction: ${JSON.stringify(resultText)}`);

  const added = support.slice(1).map((species) => ({
    name: species.name,
    photos: species.photos.map((file) => ({ name: basename(file), bytes: [...readFileSync(file)] })),
  }));
  before = await page.evaluate(() => window.demo.actions);
  await page.evaluate((list) => {
    for (const species of list) {
      document.getElementById('species-name').value = species.name;
      const transfer = new DataTransfer();
      for (const photo of species.photos) {
        transfer.items.add(new File([new Uint8Array(photo.bytes)], photo.name, { type: 'image/jpeg' }));
      }
      const input = document.getElementById('species-files');
      input.files = transfer.files;
      input.dispatchEvent(new Event('change', { bubbles: true }));
      document.getElementById('add-species').click();
    }
  }, added);
  state = await waitForActions(page, before, added.length, 'adding species with queued clicks');
  for (const species of support) {
    const found = state.species.find((entry) => entry.name === species.name);
    check(found, `species ${species.name} is missing after the queued adds (species: ${JSON.stringify(state.species)}; messages: ${JSON.stringify(state.messages.slice(-3))})`);
    check(found.photos === species.photos.length, `after the queued adds ${species.name} has ${found.photos} photos, expected ${species.photos.length}`);
  }
  check(state.species.length === support.length, `after the queued adds the page uses ${state.species.length} species, expected ${support.length}`);
  check(state.lastResult && !state.lastResult.outOfDate, `after the queued adds the result is ${JSON.stringify(state.lastResult && { predicted: state.lastResult.predicted, outOfDate: state.lastResult.outOfDate })}`);
  check(state.lastResult.scores.length === support.length, `after the queued adds the result has ${state.lastResult.scores.length} scores, expected ${support.length}`);
}

function summarise(result) {
  const warm = [...result.warmMs].sort((a, b) => a - b);
  const median = warm.length ? warm[Math.floor(warm.length / 2)] : null;
  const ms = (value) => (typeof value === 'number' ? `${value.toFixed(0)} ms` : 'n/a');
  const builtin = result.withBuiltin ? `, with built-ins ${result.withBuiltin.predicted} of ${result.withBuiltin.count}` : '';
  const predictions = result.queries.map((query) => `${query.file} -> ${query.predicted}`).join(', ');
  return `${result.backend}: ${result.failure ? `FAIL (${result.failure})` : 'PASS'}; adapter ${result.adapter ?? 'none'}; first photo ${ms(result.firstPhotoMs)}, cold query ${ms(result.coldMs)}, warm median ${ms(median)} of ${warm.length}; ${predictions}; ${result.badInput.length} bad inputs rejected${builtin}`;
}

async function main() {
  const options = parseOptions();
  checkInputs(options);
  const support = readSupport(options.support);
  const manifest = JSON.parse(readFileSync(join(options.dist, 'model', 'model.json'), 'utf8'));
  const builtinNames = manifest.species.map((species) => species.name);
  mkdirSync(options.out, { recursive: true });

  const server = await serve(options.dist);
  const baseUrl = `http://127.0.0.1:${server.address().port}`;
  let browser = null;
  let context = null;
  const results = {};
  let failed = false;
  try {
    log(`serving ${options.dist} at ${baseUrl}; Chromium ${options.chromium} with ${CHROMIUM_ARGS.join(' ')}`);
    // Playwright gives the browser a fresh profile in os.tmpdir() (/tmp unless TMPDIR is set)
    // and deletes it on close.
    browser = await chromium.launch({ executablePath: options.chromium, headless: true, args: CHROMIUM_ARGS });
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    for (const backend of options.backends) {
      log(`${backend}: start`);
      const result = emptyResult(backend);
      results[backend] = result;
      try {
        await testBackend(context, baseUrl, backend, options, support, builtinNames, result);
      } catch (error) {
        failed = true;
        result.failure = error instanceof CheckFailed ? error.message : error.stack;
        log(`${backend}: FAIL: ${result.failure}`);
      }
    }
  } finally {
    if (browser) {
      await browser.close().catch((error) => log(`closing Chromium failed: ${error.message}`));
    }
    server.close();
    server.closeAllConnections();
  }

  writeFileSync(join(options.out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  for (const result of Object.values(results)) {
    console.log(summarise(result));
  }
  if (failed) {
    log(`FAILED; details in ${join(options.out, 'results.json')}`);
    process.exitCode = 1;
  }
}

function emptyResult(backend) {
  return { backend, adapter: null, queries: [], firstPhotoMs: null, coldMs: null, warmMs: [], badInput: [], withBuiltin: null, mainThreadMaxGapMs: null };
}

main().catch((error) => {
  console.error(`[browser-test] ${error instanceof CheckFailed ? error.message : error.stack}`);
  process.exitCode = 1;
});
