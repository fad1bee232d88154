//! 2-D convolution on the CPU: im2col into a per-thread buffer, then GEMM.
//!
//! All tensors are contiguous f32 in NCHW order and weights in `[out, in, kh, kw]` order. With
//! `K = in * kh * kw` and `P = out_h * out_w`, one image costs one `[out, K] x [K, P]` product
//! forward, one `[K, out] x [out, P]` product for the input gradient and one
//! `[out, P] x [P, K]` product for the weight gradient. Where `P` is small, consecutive images
//! share one GEMM. Such chunks of images run in parallel on the rayon pool when there are at
//! least as many chunks as threads. Otherwise they run in turn, and each GEMM uses the pool.

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

    /// Returns whether the im2col matrix of an image is the image itself (1x1 kernel, stride
    /// 1, no padding), so that no buffer is needed.
    fn is_pointwise(&self) -> bool {
        self.kernel_height == 1 && self.kernel_width == 1 && self.stride == 1 && self.padding == 0
    }
}

/// GEMMs narrower than this many columns run far below the peak of the GEMM kernels, so
/// convolutions with small outputs (deep ResNet stages) put several images into one GEMM.
const MIN_GEMM_COLUMNS: usize = 512;

/// The images of one GEMM: `start..start + count`.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    start: usize,
    count: usize,
}

impl ConvGeometry {
    fn chunks(&self) -> Vec<Chunk> {
        let size = MIN_GEMM_COLUMNS
            .div_ceil(self.out_plane())
            .clamp(1, self.batch.max(1));
        (0..self.batch)
            .step_by(size)
            .map(|start| Chunk {
                start,
                count: size.min(self.batch - start),
            })
            .collect()
    }
}

/// Runs `work` on every chunk: chunks in parallel with single-threaded GEMMs when there are at
/// least as many chunks as threads, else one chunk after another with multi-threaded GEMMs.
/// Each worker keeps its scratch buffers between chunks.
fn for_each_chunk<S: Send>(
    chunks: &[Chunk],
    scratch: impl Fn() -> S + Sync + Send,
    work: impl Fn(Chunk, &mut S, gemm::Parallelism) + Sync + Send,
) {
    if chunks.len() >= rayon::current_num_threads() {
        chunks.par_iter().for_each_init(&scratch, |state, &chunk| {
            work(chunk, state, gemm::Parallelism::None)
        });
    } else {
        let mut state = scratch();
        for &chunk in chunks {
            work(chunk, &mut state, gemm::Parallelism::Rayon(0));
        }
    }
}

/// A raw pointer that chunk workers write through; every chunk writes a disjoint range.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: workers only write the elements of their own chunk's images.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// # Safety
    /// No other live slice may overlap `start..start + len`, and the range lies inside the
    /// buffer the pointer came from.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Scratch buffers of one worker: the im2col matrix and a channel-major copy of a chunk.
#[derive(Default)]
struct Scratch {
    columns: Vec<f32>,
    planes: Vec<f32>,
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
    let out = SharedMut(output.as_mut_ptr());
    let (k, p) = (g.patch_len(), g.out_plane());

    for_each_chunk(
        &g.chunks(),
        Scratch::default,
        |chunk, scratch, parallelism| {
            let width = chunk.count * p;
            let images =
                &input[chunk.start * g.in_image()..(chunk.start + chunk.count) * g.in_image()];
            let columns = im2col_chunk(&g, images, chunk.count, &mut scratch.columns);
            // SAFETY: this chunk's images occupy this range of `output` and no other worker's.
            let chunk_out =
                unsafe { out.slice(chunk.start * g.out_image(), chunk.count * g.out_image()) };
            // One image is written in place; several go through a [out_channels, count * P] matrix.
            let target: &mut [f32] = if chunk.count == 1 {
                chunk_out
                    .chunks_mut(p)
                    .enumerate()
                    .for_each(|(c, plane)| plane.fill(bias[c]));
                chunk_out
            } else {
                scratch.planes.resize(g.out_channels * width, 0.0);
                &mut scratch.planes
            };
            // SAFETY: `target` is [out_channels, width], `weight` [out_channels, K] and `columns`
            // [K, width], all row-major and inside their slices.
            unsafe {
                gemm::gemm(
                    g.out_channels,
                    width,
                    k,
                    target.as_mut_ptr(),
                    1,
                    width as isize,
                    chunk.count == 1,
                    weight.as_ptr(),
                    1,
                    k as isize,
                    columns.as_ptr(),
                    1,
                    width as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            if chunk.count > 1 {
                let chunk_out =
                    unsafe { out.slice(chunk.start * g.out_image(), chunk.count * g.out_image()) };
                scatter_planes(
                    &scratch.planes,
                    chunk_out,
                    chunk.count,
                    g.out_channels,
                    p,
                    bias,
                );
            }
        },
    );
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
    let out = SharedMut(input_grad.as_mut_ptr());
    let (k, p) = (g.patch_len(), g.out_plane());

    for_each_chunk(
        &g.chunks(),
        Scratch::default,
        |chunk, scratch, parallelism| {
            let width = chunk.count * p;
            let grads = &output_grad
                [chunk.start * g.out_image()..(chunk.start + chunk.count) * g.out_image()];
            let grads = gather_planes(grads, chunk.count, g.out_channels, p, &mut scratch.planes);
            // SAFETY: this chunk's images occupy this range of `input_grad` and no other worker's.
            let chunk_out =
                unsafe { out.slice(chunk.start * g.in_image(), chunk.count * g.in_image()) };
            // A pointwise convolution of one image writes its column gradient in place.
            let direct = g.is_pointwise() && chunk.count == 1;
            let target: &mut [f32] = if direct {
                chunk_out
            } else {
                scratch.columns.resize(k * width, 0.0);
                &mut scratch.columns
            };
            // SAFETY: `target` is [K, width] row-major; the weight read as [K, out_channels] has
            // row stride 1 and column stride K; `grads` is [out_channels, width] row-major.
            unsafe {
                gemm::gemm(
                    k,
                    width,
                    g.out_channels,
                    target.as_mut_ptr(),
                    1,
                    width as isize,
                    false,
                    weight.as_ptr(),
                    k as isize,
                    1,
                    grads.as_ptr(),
                    1,
                    width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            if !direct {
                let chunk_out =
                    unsafe { out.slice(chunk.start * g.in_image(), chunk.count * g.in_image()) };
                for (j, image) in chunk_out.chunks_mut(g.in_image()).enumerate() {
                    col2im(&g, &scratch.columns, width, j * p, image);
                }
            }
        },
    );
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
    let (k, p) = (g.patch_len(), g.out_plane());

    // Adds the contribution of one chunk to `sum`, a [out_channels, K] row-major matrix.
    let accumulate = |chunk: Chunk, sum: &mut [f32], scratch: &mut Scratch, parallelism| {
        let width = chunk.count * p;
        let images = &input[chunk.start * g.in_image()..(chunk.start + chunk.count) * g.in_image()];
        let grads =
            &output_grad[chunk.start * g.out_image()..(chunk.start + chunk.count) * g.out_image()];
        let columns = im2col_chunk(&g, images, chunk.count, &mut scratch.columns);
        let grads = gather_planes(grads, chunk.count, g.out_channels, p, &mut scratch.planes);
        // SAFETY: `sum` is [out_channels, K] row-major, `grads` [out_channels, width] row-major
        // and `columns` read as [width, K] has row stride 1 and column stride width.
        unsafe {
            gemm::gemm(
                g.out_channels,
                k,
                width,
                sum.as_mut_ptr(),
                1,
                k as isize,
                true,
                grads.as_ptr(),
                1,
                width as isize,
                columns.as_ptr(),
                width as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };

    // Each thread sums a fixed, contiguous group of chunks in order and the partial sums are
    // added in group order, so the result does not depend on thread scheduling: a seeded
    // training run gives the same weights every time.
    let chunks = g.chunks();
    let threads = rayon::current_num_threads();
    if chunks.len() >= threads {
        let group = chunks.len().div_ceil(threads);
        let partials: Vec<Vec<f32>> = chunks
            .par_chunks(group)
            .map(|group| {
                let mut sum = vec![0.0f32; weight_len];
                let mut scratch = Scratch::default();
                for &chunk in group {
                    accumulate(chunk, &mut sum, &mut scratch, gemm::Parallelism::None);
                }
                sum
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut sum = partials.next().expect("at least one group");
        for partial in partials {
            sum.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
        }
        sum
    } else {
        let mut sum = vec![0.0f32; weight_len];
        let mut scratch = Scratch::default();
        for chunk in chunks {
            accumulate(chunk, &mut sum, &mut scratch, gemm::Parallelism::Rayon(0));
        }
        sum
    }
}

/// Returns the `[K, count * P]` im2col matrix of `count` consecutive images: image `j` fills
/// columns `j * P..(j + 1) * P`. One pointwise image is its own matrix.
fn im2col_chunk<'a>(
    g: &ConvGeometry,
    images: &'a [f32],
    count: usize,
    columns: &'a mut Vec<f32>,
) -> &'a [f32] {
    if g.is_pointwise() && count == 1 {
        return images;
    }
    let width = count * g.out_plane();
    columns.resize(g.patch_len() * width, 0.0);
    for (j, image) in images.chunks(g.in_image()).enumerate() {
        im2col(g, image, columns, width, j * g.out_plane());
    }
    columns
}

/// Returns `[channels, count * plane]`, the planes of `count` images `[count, channels, plane]`
/// regrouped by channel. One image is returned as it is.
fn gather_planes<'a>(
    images: &'a [f32],
    count: usize,
    channels: usize,
    plane: usize,
    buffer: &'a mut Vec<f32>,
) -> &'a [f32] {
    if count == 1 {
        return images;
    }
    buffer.resize(channels * count * plane, 0.0);
    for (j, image) in images.chunks(channels * plane).enumerate() {
        for (c, source) in image.chunks(plane).enumerate() {
            let start = (c * count + j) * plane;
            buffer[start..start + plane].copy_from_slice(source);
        }
    }
    buffer
}

/// Writes `[channels, count * plane]` back as `count` images `[count, channels, plane]`, adding
/// `bias[c]` to channel `c`.
fn scatter_planes(
    matrix: &[f32],
    images: &mut [f32],
    count: usize,
    channels: usize,
    plane: usize,
    bias: &[f32],
) {
    for (j, image) in images.chunks_mut(channels * plane).enumerate() {
        for (c, target) in image.chunks_mut(plane).enumerate() {
            let start = (c * count + j) * plane;
            for (value, source) in target.iter_mut().zip(&matrix[start..start + plane]) {
                *value = source + bias[c];
            }
        }
    }
}

/// Writes the im2col rows of one `[in_channels, in_height, in_width]` image into `columns`, a
/// row-major matrix with `row_stride` columns, starting at column `offset`: row
/// `(c * kh + ky) * kw + kx`, column `offset + oy * out_width + ox` contains the input value under
/// that kernel tap, or 0 in the padding.
fn im2col(g: &ConvGeometry, image: &[f32], columns: &mut [f32], row_stride: usize, offset: usize) {
    let (out_h, out_w) = (g.out_height(), g.out_width());
    let mut row_index = 0;
    for c in 0..g.in_channels {
        let plane = &image[c * g.in_height * g.in_width..(c + 1) * g.in_height * g.in_width];
        for ky in 0..g.kernel_height {
            for kx in 0..g.kernel_width {
                let row_start = row_index * row_stride + offset;
                let row = &mut columns[row_start..row_start + out_h * out_w];
                row_index += 1;
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
}

/// Adds the column gradient of one image back onto its `[in_channels, in_height, in_width]`
/// gradient (the transpose of [`im2col`], same `row_stride` and `offset`).
fn col2im(g: &ConvGeometry, columns: &[f32], row_stride: usize, offset: usize, image: &mut [f32]) {
    let (out_h, out_w) = (g.out_height(), g.out_width());
    let mut row_index = 0;
    for c in 0..g.in_channels {
        let plane = &mut image[c * g.in_height * g.in_width..(c + 1) * g.in_height * g.in_width];
        for ky in 0..g.kernel_height {
            for kx in 0..g.kernel_width {
                let row_start = row_index * row_stride + offset;
                let row = &columns[row_start..row_start + out_h * out_w];
                row_index += 1;
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
