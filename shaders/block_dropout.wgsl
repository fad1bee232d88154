// Block Dropout: out = x * (M * scale), with M the per-image 3x3 mask upsampled to pixels over
// the grid blocks. The backward pass is the same kernel applied to the output gradient, because
// d_images = dy * M * scale. The factor M * scale is formed first to match the rounding of the
// tensor-op reference.
//
// One invocation per element. Workgroups are laid out in rows of info[6] so that the dispatch
// stays within 65535 workgroups per dimension.

@group(0) @binding(0) var<storage, read_write> images: array<f32>;
// [batch, 9], row-major over the grid; any real values, usually 0 or 1.
@group(0) @binding(1) var<storage, read_write> masks: array<f32>;
// [batch]
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
// [element count, channels, height, width, block height, block width, workgroups per row]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = (workgroup.y * info[6] + workgroup.x) * 256u + local;
    if (index >= info[0]) {
        return;
    }
    let channels = info[1];
    let height = info[2];
    let width = info[3];

    let plane = height * width;
    let image = index / (channels * plane);
    let pixel = index % plane;
    let row = min(pixel / width / info[4], 2u);
    let column = min(pixel % width / info[5], 2u);
    let factor = masks[image * 9u + row * 3u + column] * scales[image];

    output[index] = images[index] * factor;
}
