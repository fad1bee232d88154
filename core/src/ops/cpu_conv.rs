//! 2-D convolution on the CPU: im2col into a per-thread buffer, then one GEMM per image.
//!
//! All tensors are contiguous f32 in NCHW order and weights in `[out, in, kh, kw]` order. With
//! `K = in * kh * kw` and `P = out_h * out_w`, one image costs one `[out, K] x [K, P]` product
//! forward, one `[K, out] x [out, P]` product for the input gradient and one
//! `[out, P] x [P, K]` product for the weight gradient. Images run in parallel on the rayon pool
//! when the batch has at least as many images as the pool has threads; a smaller batch runs its
//! images in turn and lets each GEMM use the pool instead.

use rayon::prelude::*;

/// Sizes of one convolution: square stride and zero padding, no dilation, one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub out_channels: usize,
    pub kernel_height: usize,
    pub kernel_width: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    /// Returns the output height.
    pub fn out_height(&self) -> usize {
        (self.in_height + 2 * self.padding - self.kernel_height) / self.stride + 1
    }

    /// Returns the output width.
    pub fn out_width(&self) -> usize {
        (self.in_width + 2 * self.padding - self.kernel_width) / self.stride + 1
    }

    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_height * self.kernel_width
    }

    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }

    fn in_image(&self) -> usize {
        self.in_channels * self.in_height * self.in_width
    }

    fn out_image(&self) -> usize {
        self.out_channels * self.out_plane()
    }

    /// Whether the im2col matrix of an image is the image itself (1x1 kernel, stride 1, no
    /// padding), so no buffer is needed.
    fn is_pointwise(&self) -> bool {
        self.kernel_height == 1 && self.kernel_width == 1 && self.stride == 1 && self.padding == 0
    }

    fn images_in_parallel(&self) -> bool {
        self.batch >= rayon::current_num_threads()
    }
}

/// Computes `output = conv(input, weight) + bias`.
///
/// # Shapes
/// - `input`: `[batch, in_channels, in_height, in_width]`
/// - `weight`: `[out_channels, in_channels, kernel_height, kernel_width]`
/// - `bias`: `[out_channels]`
/// - returns `[batch, out_channels, out_height, out_width]`
pub fn forward(geometry: &ConvGeometry, input: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let g = *geometry;
    assert_eq!(input.len(), g.batch * g.in_image(), "input size");
    assert_eq!(weight.len(), g.out_channels * g.patch_len(), "weight size");
    assert_eq!(bias.len(), g.out_channels, "bias size");
    let mut output = vec![0.0f32; g.batch * g.out_image()];

    let image = |(image, out): (&[f32], &mut [f32]), columns: &mut Vec<f32>, parallel: bool| {
        // The bias initialises the output so that the GEMM accumulates onto it.
        for (channel, plane) in out.chunks_mut(g.out_plane()).enumerate() {
            plane.fill(bias[channel]);
        }
        let columns = im2col(&g, image, columns);
        let (k, p) = (g.patch_len() as isize, g.out_plane() as isize);
        // SAFETY: `out` is [out_channels, P], `weight` [out_channels, K] and `columns` [K, P],
        // all row-major with the strides given and inside their slices.
        unsafe {
            gemm::gemm(
                g.out_channels,
                g.out_plane(),
                g.patch_len(),
                out.as_mut_ptr(),
                1,
                p,
                true,
                weight.as_ptr(),
                1,
                k,
                columns.as_ptr(),
                1,
                p,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(parallel),
            );
        }
    };

    let pairs = input
        .chunks(g.in_image())
        .zip(output.chunks_mut(g.out_image()));
    if g.images_in_parallel() {
        pairs
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each_init(Vec::new, |columns, pair| image(pair, columns, false));
    } else {
        let mut columns = Vec::new();
        for pair in pairs {
            image(pair, &mut columns, true);
        }
    }
    output
}

/// Computes the gradient of the loss with respect to the convolution's input.
///
/// # Shapes
/// - `weight`: `[out_channels, in_channels, kernel_height, kernel_width]`
/// - `output_grad`: `[batch, out_channels, out_height, out_width]`
/// - returns `[batch, in_channels, in_height, in_width]`
pub fn input_grad(geometry: &ConvGeometry, weight: &[f32], output_grad: &[f32]) -> Vec<f32> {
    let g = *geometry;
    assert_eq!(weight.len(), g.out_channels * g.patch_len(), "weight size");
    assert_eq!(
        output_grad.len(),
        g.batch * g.out_image(),
        "output gradient size"
    );
    let mut input_grad = vec![0.0f32; g.batch * g.in_image()];

    let image = |(grad, out): (&[f32], &mut [f32]), columns: &mut Vec<f32>, parallel: bool| {
        let (k, p) = (g.patch_len(), g.out_plane());
        // Pointwise convolutions write the column gradient straight into the input gradient.
        let target: &mut [f32] = if g.is_pointwise() {
            out
        } else {
            columns.resize(k * p, 0.0);
            &mut columns[..]
        };
        // SAFETY: the destination is [K, P] row-major; the weight read as [K, out_channels]
        // has row stride 1 and column stride K; `grad` is [out_channels, P] row-major.
        unsafe {
            gemm::gemm(
                k,
                p,
                g.out_channels,
                target.as_mut_ptr(),
                1,
                p as isize,
                false,
                weight.as_ptr(),
                k as isize,
                1,
                grad.as_ptr(),
                1,
                p as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism(parallel),
            );
        }
        if !g.is_pointwise() {
            col2im(&g, columns, out);
        }
    };

    let pairs = output_grad
        .chunks(g.out_image())
        .zip(input_grad.chunks_mut(g.in_image()));
    if g.images_in_parallel() {
        pairs
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each_init(Vec::new, |columns, pair| image(pair, columns, false));
    } else {
        let mut columns = Vec::new();
        for pair in pairs {
            image(pair, &mut columns, true);
        }
    }
    input_grad
}

/// Computes the gradient of the loss with respect to the convolution's weight.
///
/// # Shapes
/// - `input`: `[batch, in_channels, in_height, in_width]`
/// - `output_grad`: `[batch, out_channels, out_height, out_width]`
/// - returns `[out_channels, in_channels, kernel_height, kernel_width]`
pub fn weight_grad(geometry: &ConvGeometry, input: &[f32], output_grad: &[f32]) -> Vec<f32> {
    let g = *geometry;
    assert_eq!(input.len(), g.batch * g.in_image(), "input size");
    assert_eq!(
        output_grad.len(),
        g.batch * g.out_image(),
        "output gradient size"
    );
    let weight_len = g.out_channels * g.patch_len();

    // Adds the contribution of one image to `sum`, a [out_channels, K] row-major matrix.
    let accumulate = |sum: &mut [f32], columns: &mut Vec<f32>, image: usize, parallel: bool| {
        let x = &input[image * g.in_image()..(image + 1) * g.in_image()];
        let grad = &output_grad[image * g.out_image()..(image + 1) * g.out_image()];
        let columns = im2col(&g, x, columns);
        let (k, p) = (g.patch_len() as isize, g.out_plane() as isize);
        // SAFETY: `sum` is [out_channels, K] row-major, `grad` [out_channels, P] row-major and
        // `columns` read as [P, K] has row stride 1 and column stride P.
        unsafe {
            gemm::gemm(
                g.out_channels,
                g.patch_len(),
                g.out_plane(),
                sum.as_mut_ptr(),
                1,
                k,
                true,
                grad.as_ptr(),
                1,
                p,
                columns.as_ptr(),
                p,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(parallel),
            );
        }
    };

    if g.images_in_parallel() {
        (0..g.batch)
            .into_par_iter()
            .fold(
                || (vec![0.0f32; weight_len], Vec::new()),
                |(mut sum, mut columns), image| {
                    accumulate(&mut sum, &mut columns, image, false);
                    (sum, columns)
                },
            )
            .map(|(sum, _)| sum)
            .reduce(
                || vec![0.0f32; weight_len],
                |mut left, right| {
                    left.iter_mut().zip(&right).for_each(|(l, r)| *l += r);
                    left
                },
            )
    } else {
        let mut sum = vec![0.0f32; weight_len];
        let mut columns = Vec::new();
        for image in 0..g.batch {
            accumulate(&mut sum, &mut columns, image, true);
        }
        sum
    }
}

fn parallelism(images_in_parallel: bool) -> gemm::Parallelism {
    if images_in_parallel {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// Returns the `[K, P]` im2col matrix of one `[in_channels, in_height, in_width]` image: row
/// `(c * kh + ky) * kw + kx`, column `oy * out_width + ox` holds the input value under that
/// kernel tap, or 0 in the padding. Pointwise convolutions return the image itself.
fn im2col<'a>(g: &ConvGeometry, image: &'a [f32], columns: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return image;
    }
    let (out_h, out_w) = (g.out_height(), g.out_width());
    columns.resize(g.patch_len() * out_h * out_w, 0.0);
    let mut rows = columns.chunks_mut(out_h * out_w);
    for c in 0..g.in_channels {
        let plane = &image[c * g.in_height * g.in_width..(c + 1) * g.in_height * g.in_width];
        for ky in 0..g.kernel_height {
            for kx in 0..g.kernel_width {
                let row = rows.next().expect("one row per kernel tap");
                let (first, last) = valid_range(kx, g.padding, g.stride, g.in_width, out_w);
                for oy in 0..out_h {
                    let out_row = &mut row[oy * out_w..(oy + 1) * out_w];
                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                    if iy < 0 || iy >= g.in_height as isize || first >= last {
                        out_row.fill(0.0);
                        continue;
                    }
                    let in_row = &plane[iy as usize * g.in_width..(iy as usize + 1) * g.in_width];
                    out_row[..first].fill(0.0);
                    out_row[last..].fill(0.0);
                    let start = first * g.stride + kx - g.padding;
                    if g.stride == 1 {
                        out_row[first..last].copy_from_slice(&in_row[start..start + last - first]);
                    } else {
                        for (ox, value) in out_row[first..last].iter_mut().enumerate() {
                            *value = in_row[start + ox * g.stride];
                        }
                    }
                }
            }
        }
    }
    columns
}

/// Adds a `[K, P]` column gradient back onto the `[in_channels, in_height, in_width]` image
/// gradient it came from (the transpose of [`im2col`]). `image` must start at zero.
fn col2im(g: &ConvGeometry, columns: &[f32], image: &mut [f32]) {
    let (out_h, out_w) = (g.out_height(), g.out_width());
    let mut rows = columns.chunks(out_h * out_w);
    for c in 0..g.in_channels {
        let plane = &mut image[c * g.in_height * g.in_width..(c + 1) * g.in_height * g.in_width];
        for ky in 0..g.kernel_height {
            for kx in 0..g.kernel_width {
                let row = rows.next().expect("one row per kernel tap");
                let (first, last) = valid_range(kx, g.padding, g.stride, g.in_width, out_w);
                if first >= last {
                    continue;
                }
                for oy in 0..out_h {
                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                    if iy < 0 || iy >= g.in_height as isize {
                        continue;
                    }
                    let in_row =
                        &mut plane[iy as usize * g.in_width..(iy as usize + 1) * g.in_width];
                    let out_row = &row[oy * out_w..(oy + 1) * out_w];
                    let start = first * g.stride + kx - g.padding;
                    if g.stride == 1 {
                        let target = &mut in_row[start..start + last - first];
                        for (value, grad) in target.iter_mut().zip(&out_row[first..last]) {
                            *value += grad;
                        }
                    } else {
                        for (ox, grad) in out_row[first..last].iter().enumerate() {
                            in_row[start + ox * g.stride] += grad;
                        }
                    }
                }
            }
        }
    }
}

/// Returns the range `first..last` of output columns whose input column
/// `ox * stride + kx - padding` lies inside `0..in_width`.
fn valid_range(
    kx: usize,
    padding: usize,
    stride: usize,
    in_width: usize,
    out_width: usize,
) -> (usize, usize) {
    // The smallest ox with ox * stride + kx >= padding.
    let first = padding.saturating_sub(kx).div_ceil(stride).min(out_width);
    // One past the largest ox with ox * stride + kx - padding <= in_width - 1.
    let last = if in_width + padding > kx {
        ((in_width + padding - kx - 1) / stride + 1).min(out_width)
    } else {
        0
    };
    (first, last.max(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct seven-loop convolution, the definition the GEMM formulation must match.
    fn direct_forward(g: &ConvGeometry, input: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let (out_h, out_w) = (g.out_height(), g.out_width());
        let mut output = vec![0.0f32; g.batch * g.out_channels * out_h * out_w];
        for n in 0..g.batch {
            for o in 0..g.out_channels {
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let mut sum = bias[o] as f64;
                        for c in 0..g.in_channels {
                            for ky in 0..g.kernel_height {
                                for kx in 0..g.kernel_width {
                                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.in_height as isize
                                        || ix >= g.in_width as isize
                                    {
                                        continue;
                                    }
                                    let x = input[((n * g.in_channels + c) * g.in_height
                                        + iy as usize)
                                        * g.in_width
                                        + ix as usize];
                                    let w = weight[((o * g.in_channels + c) * g.kernel_height
                                        + ky)
                                        * g.kernel_width
                                        + kx];
                                    sum += (x * w) as f64;
                                }
                            }
                        }
                        output[((n * g.out_channels + o) * out_h + oy) * out_w + ox] = sum as f32;
                    }
                }
            }
        }
        output
    }

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| ((((i + seed) * 2_654_435_761usize) >> 7) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn valid_range_covers_inside_columns() {
        for (kx, padding, stride, in_width) in
            [(0, 1, 1, 5), (2, 1, 1, 5), (0, 3, 2, 7), (6, 3, 2, 7)]
        {
            let kernel = 2 * padding + 1;
            let out_width = (in_width + 2 * padding - kernel) / stride + 1;
            let (first, last) = valid_range(kx, padding, stride, in_width, out_width);
            for ox in 0..out_width {
                let ix = (ox * stride + kx) as isize - padding as isize;
                let inside = ix >= 0 && ix < in_width as isize;
                assert_eq!(
                    inside,
                    (first..last).contains(&ox),
                    "kx {kx} padding {padding} stride {stride} width {in_width} ox {ox}"
                );
            }
        }
    }

    #[test]
    fn forward_matches_direct_loops() {
        let cases = [
            (2, 3, 9, 7, 4, 3, 1, 1),
            (1, 2, 11, 11, 3, 7, 2, 3),
            (3, 4, 8, 5, 5, 3, 2, 1),
            (2, 3, 6, 6, 2, 1, 2, 0),
            (1, 5, 4, 4, 6, 1, 1, 0),
        ];
        for (batch, in_channels, in_height, in_width, out_channels, kernel, stride, padding) in
            cases
        {
            let g = ConvGeometry {
                batch,
                in_channels,
                in_height,
                in_width,
                out_channels,
                kernel_height: kernel,
                kernel_width: kernel,
                stride,
                padding,
            };
            let input = values(batch * g.in_image(), 1);
            let weight = values(out_channels * g.patch_len(), 2);
            let bias = values(out_channels, 3);
            let expected = direct_forward(&g, &input, &weight, &bias);
            let actual = forward(&g, &input, &weight, &bias);
            for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
                assert!((a - e).abs() < 1e-4, "{g:?} output {i}: {a} vs {e}");
            }
        }
    }
}
