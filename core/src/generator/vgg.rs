//! VGG16's convolutional features up to `relu4_2`, for the perceptual loss of one-image
//! fine-tuning, in torchvision's layout (`features.N.weight`, `features.N.bias`) so that
//! torchvision's ImageNet checkpoint loads by name.

use crate::ops::conv2d_weights;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Output channels of the 3x3 convolutions of VGG16 up to `relu4_2`, with `None` for 2x2
/// max-pooling, in the order of torchvision's `vgg16().features`.
const LAYERS: [Option<usize>; 12] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
];

/// Builds [`Vgg16Features`].
#[derive(Config, Debug)]
pub struct Vgg16Config {
    /// Divides every layer's channel count (1 for torchvision's VGG16); reduced networks serve
    /// tests and fast demos with random weights.
    #[config(default = 1)]
    pub width_divisor: usize,
}

/// One 3x3 convolution with padding 1 and bias, followed by ReLU.
#[derive(Module, Debug)]
pub struct VggConv {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
}

/// VGG16 from `conv1_1` to `relu4_2`. `features[i]` is the convolution at torchvision's index
/// `features.{2 * i + pools before it}`; see [`Vgg16Features::torchvision_index`].
#[derive(Module, Debug)]
pub struct Vgg16Features {
    pub features: Vec<VggConv>,
}

impl Vgg16Config {
    /// Creates the network with Kaiming-normal weights and zero biases on `device`.
    pub fn init(&self, device: &Device) -> Vgg16Features {
        let divisor = self.width_divisor.max(1);
        let mut inputs = 3;
        let features = LAYERS
            .iter()
            .flatten()
            .map(|&outputs| {
                let outputs = (outputs / divisor).max(1);
                let std = (2.0 / (9 * outputs) as f64).sqrt();
                let weight = Tensor::<4>::random(
                    [outputs, inputs, 3, 3],
                    burn::tensor::Distribution::Normal(0.0, std),
                    device,
                );
                inputs = outputs;
                VggConv {
                    weight: Param::from_tensor(weight),
                    bias: Param::from_tensor(Tensor::zeros([outputs], device)),
                }
            })
            .collect();
        Vgg16Features { features }
    }
}

impl Vgg16Features {
    /// Returns torchvision's index in `vgg16().features` of convolution `i` of this network.
    pub fn torchvision_index(i: usize) -> usize {
        let mut index = 0;
        let mut convolutions = 0;
        for layer in LAYERS {
            match layer {
                Some(_) if convolutions == i => return index,
                Some(_) => {
                    convolutions += 1;
                    index += 2;
                }
                None => index += 1,
            }
        }
        panic!("VGG16 up to relu4_2 has 9 convolutions, not {}", i + 1)
    }

    /// Returns the activations after every ReLU from `relu1_1` to `relu4_2` (9 maps).
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, height, width]`, ImageNet-normalised
    pub fn forward(&self, images: Tensor<4>) -> Vec<Tensor<4>> {
        let mut outputs = Vec::with_capacity(self.features.len());
        let mut convolutions = self.features.iter();
        let mut x = images;
        for layer in LAYERS {
            x = match layer {
                Some(_) => {
                    let conv = convolutions.next().expect("one module per convolution");
                    let y = relu(conv2d_weights(
                        x,
                        conv.weight.val(),
                        Some(conv.bias.val()),
                        1,
                        1,
                    ));
                    outputs.push(y.clone());
                    y
                }
                None => burn::tensor::module::max_pool2d(
                    x,
                    burn::tensor::ops::MaxPoolOptions::new([2, 2]).with_stride([2, 2]),
                ),
            };
        }
        outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_indices() {
        let _rng = crate::test_support::lock_rng();
        let indices: Vec<usize> = (0..9).map(Vgg16Features::torchvision_index).collect();
        assert_eq!(indices, vec![0, 2, 5, 7, 10, 12, 14, 17, 19]);
    }

    #[test]
    fn feature_shapes() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let model = Vgg16Config::new().with_width_divisor(16).init(&device);
        let maps = model.forward(Tensor::zeros([1, 3, 32, 32], &device));
        let shapes: Vec<[usize; 4]> = maps.iter().map(|m| m.dims()).collect();
        assert_eq!(
            shapes,
            vec![
                [1, 4, 32, 32],
                [1, 4, 32, 32],
                [1, 8, 16, 16],
                [1, 8, 16, 16],
                [1, 16, 8, 8],
                [1, 16, 8, 8],
                [1, 16, 8, 8],
                [1, 32, 4, 4],
                [1, 32, 4, 4],
            ]
        );
    }
}
