// Grid fusion backward, gradient of the weights:
// d_weights[b, k] = sum over channels and the pixels of block k of dy * (original - generated).
//
// One workgroup per (image, block) pair, numbered b * 9 + k and laid out in rows of info[6]
// workgroups so that the dispatch stays within 65535 workgroups per dimension. Each invocation
// sums a strided share of the block's elements, then the workgroup adds the 256 partial sums
// in shared memory. An empty block (side 4 gives blocks of 2, 2 and 0 pixels) writes 0.
//
// No invocation returns early: workgroupBarrier must be reached by the whole workgroup, and the
// sizes come from a read_write buffer, which WGSL's uniformity analysis treats as non-uniform.

@group(0) @binding(0) var<storage, read_write> original: array<f32>;
@group(0) @binding(1) var<storage, read_write> generated: array<f32>;
@group(0) @binding(2) var<storage, read_write> output_grad: array<f32>;
// [batch, 9], row-major over the grid.
@group(0) @binding(3) var<storage, read_write> weights_grad: array<f32>;
// [batch, channels, height, width, block height, block width, workgroups per row]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let batch = info[0];
    let channels = info[1];
    let height = info[2];
    let width = info[3];
    let block_height = info[4];
    let block_width = info[5];

    let pair = workgroup.y * info[6] + workgroup.x;
    let valid = pair < batch * 9u;
    let image = pair / 9u;
    let block = pair % 9u;

    // The block's pixel ranges, clipped to the image; a range past the edge is empty.
    let top = min(block / 3u * block_height, height);
    let bottom = min(top + block_height, height);
    let left = min(block % 3u * block_width, width);
    let right = min(left + block_width, width);
    let rows = bottom - top;
    let columns = right - left;
    let block_pixels = rows * columns;
    var count = channels * block_pixels;
    if (!valid) {
        count = 0u;
    }

    var sum = 0.0;
    for (var element = local; element < count; element += 256u) {
        let channel = element / block_pixels;
        let pixel = element % block_pixels;
        let y = top + pixel / columns;
        let x = left + pixel % columns;
        let index = ((image * channels + channel) * height + y) * width + x;
        sum += output_grad[index] * (original[index] - generated[index]);
    }
    partial[local] = sum;
    workgroupBarrier();

    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            partial[local] += partial[local + stride];
        }
        workgroupBarrier();
    }

    if (valid && local == 0u) {
        weights_grad[pair] = partial[0];
    }
}
