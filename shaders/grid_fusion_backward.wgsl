// Grid fusion backward, gradients of the two images: d_original = W * dy and
// d_generated = dy - W * dy, with W the per-image 3x3 weights upsampled to pixels. The second
// form equals (1 - W) * dy and matches the rounding of the tensor-op reference's autodiff.
//
// One invocation per element. Workgroups are laid out in rows of info[6] so that the dispatch
// stays within 65535 workgroups per dimension.

// [batch, 9], row-major over the grid.
@group(0) @binding(0) var<storage, read_write> weights: array<f32>;
@group(0) @binding(1) var<storage, read_write> output_grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> original_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> generated_grad: array<f32>;
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
    let weight = weights[image * 9u + row * 3u + column];

    let dy = output_grad[index];
    let weighted = weight * dy;
    original_grad[index] = weighted;
    generated_grad[index] = dy - weighted;
}
