//! The choice of embedding network (Conv4 or ResNet-18) and the counts that `summary` reports.

use super::{Conv4, Conv4Config, ResNet, ResNetConfig};
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of embedding network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    /// Four 64-channel Conv-BatchNorm-ReLU-MaxPool blocks; 1600-d at 84x84.
    Conv4,
    /// ResNet-18 without its classifier, torchvision's layout; 512-d.
    Resnet18,
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackboneKind::Conv4 => "conv4",
            BackboneKind::Resnet18 => "resnet18",
        })
    }
}

impl std::str::FromStr for BackboneKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "conv4" => Ok(BackboneKind::Conv4),
            "resnet18" => Ok(BackboneKind::Resnet18),
            other => Err(format!(
                "unknown backbone {other:?}; expected conv4 or resnet18"
            )),
        }
    }
}

impl BackboneKind {
    /// Creates the network with freshly initialised weights.
    pub fn init(self, device: &Device) -> Backbone {
        match self {
            BackboneKind::Conv4 => Backbone::Conv4(Conv4Config::new().init(device)),
            BackboneKind::Resnet18 => Backbone::ResNet18(ResNetConfig::new().init(device)),
        }
    }

    /// Returns the embedding size for `side x side` inputs.
    pub fn embedding_dim(self, side: usize) -> usize {
        match self {
            BackboneKind::Conv4 => {
                let mut out = side;
                for _ in 0..4 {
                    out /= 2;
                }
                64 * out * out
            }
            BackboneKind::Resnet18 => 512,
        }
    }

    /// Returns the multiply-accumulates of one image's forward pass at `side x side`:
    /// convolutions and linear layers (BatchNorm, pooling and additions are left out, as is
    /// customary).
    pub fn multiply_accumulates(self, side: usize) -> u64 {
        match self {
            BackboneKind::Conv4 => {
                let mut macs = 0;
                let mut size = side;
                let mut channels = 3;
                for _ in 0..4 {
                    macs += conv_macs(channels, 64, 3, size * size);
                    channels = 64;
                    size /= 2;
                }
                macs
            }
            BackboneKind::Resnet18 => {
                let out = |size: usize, kernel: usize, stride: usize, padding: usize| {
                    (size + 2 * padding - kernel) / stride + 1
                };
                let mut size = out(side, 7, 2, 3);
                let mut macs = conv_macs(3, 64, 7, size * size);
                size = out(size, 3, 2, 1);
                let mut channels = 64;
                for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
                    for block in 0..2 {
                        let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                        let next = out(size, 3, stride, 1);
                        macs += conv_macs(channels, width, 3, next * next);
                        macs += conv_macs(width, width, 3, next * next);
                        if stride != 1 || channels != width {
                            macs += conv_macs(channels, width, 1, next * next);
                        }
                        channels = width;
                        size = next;
                    }
                }
                macs
            }
        }
    }
}

fn conv_macs(in_channels: usize, out_channels: usize, kernel: usize, pixels: usize) -> u64 {
    (in_channels * out_channels * kernel * kernel * pixels) as u64
}

/// An embedding network.
#[derive(Module, Debug)]
pub enum Backbone {
    Conv4(Conv4),
    ResNet18(ResNet),
}

impl Backbone {
    /// Embeds a batch of images.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, side, side]`, ImageNet-normalised
    /// - output: `[batch, embedding_dim]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Backbone::Conv4(net) => net.forward(images),
            Backbone::ResNet18(net) => net.forward(images),
        }
    }

    /// Returns which network this is.
    pub fn kind(&self) -> BackboneKind {
        match self {
            Backbone::Conv4(_) => BackboneKind::Conv4,
            Backbone::ResNet18(_) => BackboneKind::Resnet18,
        }
    }
}

/// Returns a copy of `module` whose parameters have new identities, so that the copy and the
/// original can live in one model: the optimizer and the gradients key parameters by identity.
pub fn with_fresh_ids<M: Module>(module: M) -> M {
    struct Renamer;
    impl ModuleMapper for Renamer {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (_, tensor, _) = param.consume();
            let require_grad = tensor.is_require_grad();
            Param::initialized(ParamId::new(), tensor).set_require_grad(require_grad)
        }
    }
    module.map(&mut Renamer)
}

/// Returns the number of trainable values of `module`: every float parameter except
/// BatchNorm's running mean and variance, which Burn stores as parameters too.
pub fn trainable_parameters<M: Module>(module: &M) -> usize {
    struct Counter {
        path: Vec<String>,
        count: usize,
    }
    impl ModuleVisitor for Counter {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let running = self
                .path
                .last()
                .is_some_and(|name| name == "running_mean" || name == "running_var");
            if !running {
                self.count += param.shape().num_elements();
            }
        }
    }
    let mut counter = Counter {
        path: Vec::new(),
        count: 0,
    };
    module.visit(&mut counter);
    counter.count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainable_counts_leave_out_running_statistics() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        // torchvision's resnet18 without fc: 11,689,512 - 513,000.
        assert_eq!(
            trainable_parameters(&BackboneKind::Resnet18.init(&device)),
            11_176_512
        );
        // 3*64*9 + 64 + 2*64, then three times 64*64*9 + 64 + 2*64.
        assert_eq!(
            trainable_parameters(&BackboneKind::Conv4.init(&device)),
            113_088
        );
    }

    #[test]
    fn resnet18_macs_match_the_published_figure() {
        // ResNet-18 at 224: 1.814 GMACs with the classifier's 0.5 M left out.
        let macs = BackboneKind::Resnet18.multiply_accumulates(224);
        assert_eq!(macs, 1_813_561_344);
    }

    #[test]
    fn fresh_ids_keep_values() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let net = BackboneKind::Conv4.init(&device);
        let copy = with_fresh_ids(net.clone());
        let images = Tensor::<4>::ones([1, 3, 84, 84], &device);
        let a = net.forward(images.clone()).into_data();
        let b = copy.forward(images).into_data();
        a.assert_eq(&b, true);
        let mut ids = Vec::new();
        struct Ids<'a>(&'a mut Vec<ParamId>);
        impl ModuleVisitor for Ids<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.id);
            }
        }
        net.visit(&mut Ids(&mut ids));
        let first = ids.len();
        copy.visit(&mut Ids(&mut ids));
        let mut unique = ids.clone();
        unique.sort_by_key(|id| id.val());
        unique.dedup();
        // The running statistics keep their identities; everything trainable is new.
        assert!(unique.len() > first, "{} of {}", unique.len(), ids.len());
    }
}
