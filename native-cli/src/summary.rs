//! `metairnet summary`: parameters and multiply-accumulates of ProtoNet, MetaIRNet and the
//! Siamese MetaIRNet++ for one backbone, encoder and input size.

use anyhow::{Result, bail};
use burn::prelude::Device;
use metairnet::model::{BackboneKind, FewShotNet, FusionNetConfig, SupportAugment};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// Network of the classifier: conv4 or resnet18.
    #[arg(long, default_value = "resnet18", value_name = "NET")]
    backbone: BackboneKind,

    /// Network of the fusion network's encoders: conv4 or resnet18.
    #[arg(long, default_value = "resnet18", value_name = "NET")]
    encoder: BackboneKind,

    /// Input side in pixels (84 or 224).
    #[arg(long, default_value_t = 224, value_name = "PIXELS")]
    image_size: usize,

    /// Take backbone, encoder and input size from a run folder's configuration instead. A run
    /// without a fusion network (ProtoNet) uses its backbone's network as the encoder.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["backbone", "encoder", "image_size"])]
    run: Option<PathBuf>,

    /// Print one JSON object per model instead of a table.
    #[arg(long)]
    json: bool,
}

/// The figures of one model.
#[derive(serde::Serialize)]
struct ModelFigures {
    model: String,
    backbone: String,
    encoder: Option<String>,
    image_size: usize,
    /// Trainable parameters (BatchNorm running statistics left out).
    parameters: usize,
    backbone_parameters: usize,
    fusion_parameters: usize,
    /// Multiply-accumulates to embed one image with the backbone.
    backbone_macs_per_image: u64,
    /// Multiply-accumulates of the fusion network for one (original, generated) pair.
    fusion_macs_per_pair: u64,
}

pub fn run(args: SummaryArgs) -> Result<()> {
    let (backbone, encoder, side) = match &args.run {
        Some(dir) => {
            let config = metairnet::train::RunFolder::open(dir)?.config()?;
            // The `[fusion]` section of a run without fusion keeps its default, a conv4 encoder,
            // which would be rejected at 224 pixels.
            let encoder = if config.model.support_augment == SupportAugment::Fusion {
                config.fusion.encoder
            } else {
                config.model.backbone
            };
            (
                config.model.backbone,
                encoder,
                config.model.image_size.pixels() as usize,
            )
        }
        None => (args.backbone, args.encoder, args.image_size),
    };
    if side != 84 && side != 224 {
        bail!("invalid --image-size {side}; expected 84 or 224");
    }
    for (kind, name) in [(backbone, "--backbone"), (encoder, "--encoder")] {
        if kind == BackboneKind::Conv4 && side != 84 {
            bail!("invalid {name} conv4 with --image-size {side}; conv4 takes 84x84 inputs");
        }
    }

    let device = Device::flex();
    let backbone_macs = backbone.multiply_accumulates(side);
    let dim = encoder.embedding_dim(side);
    let fusion_macs = 2 * encoder.multiply_accumulates(side) + (2 * dim * 9) as u64;
    let mut rows = Vec::new();
    let models: [(&str, Option<bool>); 3] = [
        ("ProtoNet", None),
        ("MetaIRNet", Some(false)),
        ("MetaIRNet++ Siamese", Some(true)),
    ];
    for (name, siamese) in models {
        let net = match siamese {
            None => FewShotNet::protonet(backbone, &device),
            Some(siamese) => FewShotNet::metairnet(
                backbone,
                &FusionNetConfig::new(encoder, side).with_siamese(siamese),
                &device,
            ),
        };
        let (backbone_parameters, fusion_parameters) = net.parameter_counts();
        rows.push(ModelFigures {
            model: name.to_string(),
            backbone: backbone.to_string(),
            encoder: siamese.map(|_| encoder.to_string()),
            image_size: side,
            parameters: backbone_parameters + fusion_parameters,
            backbone_parameters,
            fusion_parameters,
            backbone_macs_per_image: backbone_macs,
            fusion_macs_per_pair: if siamese.is_some() { fusion_macs } else { 0 },
        });
    }

    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!("backbone {backbone}, fusion encoders {encoder}, {side}x{side} inputs");
    println!(
        "{:<22} {:>14} {:>14} {:>14} {:>18} {:>20}",
        "model", "parameters", "backbone", "fusion", "MACs/image (bb)", "MACs/pair (fusion)"
    );
    for row in &rows {
        println!(
            "{:<22} {:>14} {:>14} {:>14} {:>18} {:>20}",
            row.model,
            group(row.parameters as u64),
            group(row.backbone_parameters as u64),
            group(row.fusion_parameters as u64),
            group(row.backbone_macs_per_image),
            group(row.fusion_macs_per_pair),
        );
    }
    println!(
        "parameters are trainable values (BatchNorm running statistics left out); MACs count convolutions and linear layers"
    );
    Ok(())
}

/// Writes `value` with commas between groups of three digits.
fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
