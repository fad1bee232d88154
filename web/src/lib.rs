//! The WebAssembly module of the browser demo.
//!
//! It runs in a Web Worker, so decoding photos and running the network do not block the page.
//! The worker keeps one model at a time, on one backend:
//! - `webgpu`: Burn's wgpu backend on the browser's WebGPU adapter;
//! - `cpu`: Burn's flex backend, compiled to WebAssembly.
//!
//! Photos go through the same decoding, resizing and cropping code as `metairnet classify`, and
//! scores are the same softmax over minus squared distances to the prototypes, so the page and the
//! command line agree up to floating-point rounding.
//!
//! Exported functions (all asynchronous ones return promises that reject with an `Error` whose
//! message is meant for people):
//! - `load(backend, manifestJson, weights, prototypes)`: loads a bundle written by
//!   `metairnet export-web` and returns a JSON description of it;
//! - `embed(photo)`: decodes one photo file and returns its embedding as a `Float32Array`;
//! - `scores(query, prototypes)`: class probabilities for one embedding against rows of
//!   prototypes;
//! - `builtinPrototypes()`: the bundle's own prototypes, one row per built-in species.
#![cfg(target_arch = "wasm32")]

use burn::prelude::*;
use metairnet::bundle::{BundleManifest, BundleSpecies, prototype_scores};
use metairnet::classify::embed_photos;
use metairnet::data::{crop_for_model, decode_image_within};
use metairnet::model::Backbone;
use serde::Serialize;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// The largest photo accepted, in pixels: decoding one takes 3 bytes a pixel, plus a copy, and a
/// WebAssembly instance has at most 4 GiB.
const MAX_PIXELS: u64 = 60_000_000;

/// The loaded model.
struct Loaded {
    manifest: BundleManifest,
    backbone: Backbone,
    device: Device,
    prototypes: Vec<f32>,
}

thread_local! {
    static MODEL: RefCell<Option<Rc<Loaded>>> = const { RefCell::new(None) };
    /// A wgpu runtime is set up once per worker; later loads reuse its device.
    static WEBGPU: RefCell<Option<Device>> = const { RefCell::new(None) };
}

/// The description that `load` returns.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadInfo<'a> {
    backend: &'static str,
    backbone: String,
    image_size: u32,
    embedding_dim: usize,
    species: &'a [BundleSpecies],
}

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        // A panic aborts the instance; the message is what the page can show and log.
        web_log(&format!("metairnet-web panicked: {info}"));
    }));
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn web_log(message: &str);
}

async fn device_for(backend: &str) -> Result<Device, JsError> {
    match backend {
        "cpu" => Ok(Device::flex()),
        "webgpu" => {
            if let Some(device) = WEBGPU.with(|cell| cell.borrow().clone()) {
                return Ok(device);
            }
            let device = Device::wgpu_options().init_async().await.map_err(|e| {
                JsError::new(&format!(
                    "WebGPU could not start ({e}); use the CPU backend instead"
                ))
            })?;
            WEBGPU.with(|cell| *cell.borrow_mut() = Some(device.clone()));
            Ok(device)
        }
        other => Err(JsError::new(&format!(
            "unknown backend {other:?}; expected \"webgpu\" or \"cpu\""
        ))),
    }
}

/// Loads a model bundle on `backend` ("webgpu" or "cpu") and returns a JSON description:
/// `{backend, backbone, imageSize, embeddingDim, species: [{class, name, photos}]}`.
#[wasm_bindgen]
pub async fn load(
    backend: String,
    manifest: String,
    weights: Vec<u8>,
    prototypes: Vec<u8>,
) -> Result<String, JsError> {
    let manifest =
        BundleManifest::from_json(&manifest).map_err(|e| JsError::new(&e.to_string()))?;
    let prototypes = manifest
        .read_prototypes(&prototypes)
        .map_err(|e| JsError::new(&e.to_string()))?;
    let device = device_for(&backend).await?;
    let backbone = manifest
        .load_backbone(weights, &device)
        .map_err(|e| JsError::new(&e.to_string()))?;
    let info = LoadInfo {
        backend: if backend == "cpu" { "cpu" } else { "webgpu" },
        backbone: manifest.backbone.to_string(),
        image_size: manifest.image_size.pixels(),
        embedding_dim: manifest.embedding_dim,
        species: &manifest.species,
    };
    let text = serde_json::to_string(&info).expect("plain data serialises");
    MODEL.with(|cell| {
        *cell.borrow_mut() = Some(Rc::new(Loaded {
            manifest,
            backbone,
            device,
            prototypes,
        }))
    });
    Ok(text)
}

fn loaded() -> Result<Rc<Loaded>, JsError> {
    MODEL
        .with(|cell| cell.borrow().clone())
        .ok_or_else(|| JsError::new("no model is loaded; call load first"))
}

/// Decodes one photo file (JPEG, PNG, BMP, GIF, WebP or TIFF), crops it as `metairnet classify`
/// does and returns its embedding.
#[wasm_bindgen]
pub async fn embed(photo: Vec<u8>) -> Result<Vec<f32>, JsError> {
    let model = loaded()?;
    let image =
        decode_image_within(&photo, MAX_PIXELS).map_err(|e| JsError::new(&e.to_string()))?;
    drop(photo);
    let cropped = crop_for_model(&image, model.manifest.image_size);
    drop(image);
    let embedding = embed_photos(
        &model.backbone,
        &[&cropped],
        model.manifest.image_size,
        &model.device,
    );
    let data = embedding
        .into_data_async()
        .await
        .map_err(|e| JsError::new(&format!("reading the embedding back failed: {e:?}")))?;
    data.try_into_vec::<f32>()
        .map_err(|e| JsError::new(&format!("the embedding is not f32: {e:?}")))
}

/// Returns the class probabilities of one embedding against `prototypes`, rows of the same
/// length as `query`.
#[wasm_bindgen]
pub fn scores(query: Vec<f32>, prototypes: Vec<f32>) -> Result<Vec<f32>, JsError> {
    if query.is_empty() || prototypes.len() % query.len() != 0 {
        return Err(JsError::new(&format!(
            "{} prototype values are not rows of {} values",
            prototypes.len(),
            query.len()
        )));
    }
    Ok(prototype_scores(&query, &prototypes))
}

/// Returns the bundle's prototypes, one row of `embeddingDim` values per built-in species.
#[wasm_bindgen(js_name = builtinPrototypes)]
pub fn builtin_prototypes() -> Result<Vec<f32>, JsError> {
    Ok(loaded()?.prototypes.clone())
}

/// Returns the largest photo accepted, in pixels.
#[wasm_bindgen(js_name = maxPixels)]
pub fn max_pixels() -> f64 {
    MAX_PIXELS as f64
}
