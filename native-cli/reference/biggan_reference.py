"""Independent PyTorch reference for the BigGAN generator of `metairnet::generator`.

It builds BigGAN-PyTorch's generator with the same state-dict key names: hierarchical z, shared
class embedding, class-conditional BatchNorm with stored statistics, spectral normalisation from
the stored vector u0 without updating it, self-attention and tanh. It fills every tensor with a
deterministic formula, runs the generator on fixed latents and prints a JSON summary of the
images. The Rust test `generator::import::tests::import_matches_pytorch_reference` writes a checkpoint with the same
keys and formula, loads it through `load_biggan` and compares its output with the numbers this
script printed. `--save FILE` also writes the checkpoint with `torch.save`.

    python3 native-cli/reference/biggan_reference.py [--save small_G.pth]
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F

# The configuration of the Rust test: width 16, 64x64 output with attention at 64,
# 5 latent chunks of 20, shared class vectors of 16 values, 4 classes.
CH, RESOLUTION, DIM_Z, SHARED, CLASSES = 16, 64, 100, 16, 4
ARCH = {64: ([16, 16, 8, 4], [16, 8, 4, 2])}
BN_EPS, SN_EPS = 1e-5, 1e-6


def keys_and_shapes():
    """Returns BigGAN-PyTorch's state-dict keys and shapes for this configuration."""
    inputs, outputs = ARCH[RESOLUTION]
    chunk = DIM_Z // (len(inputs) + 1)
    condition = SHARED + chunk
    keys = {"shared.weight": [CLASSES, SHARED]}

    def sn(prefix, weight_shape, bias):
        keys[prefix + ".weight"] = weight_shape
        if bias:
            keys[prefix + ".bias"] = [weight_shape[0]]
        keys[prefix + ".u0"] = [1, weight_shape[0]]
        keys[prefix + ".sv0"] = [1]

    sn("linear", [inputs[0] * CH * 16, chunk], True)
    side = 4
    for i, (a, b) in enumerate(zip(inputs, outputs)):
        a, b, side = a * CH, b * CH, side * 2
        p = f"blocks.{i}.0"
        for bn, channels in (("bn1", a), ("bn2", b)):
            sn(f"{p}.{bn}.gain", [channels, condition], False)
            sn(f"{p}.{bn}.bias", [channels, condition], False)
            keys[f"{p}.{bn}.stored_mean"] = [channels]
            keys[f"{p}.{bn}.stored_var"] = [channels]
        sn(f"{p}.conv1", [b, a, 3, 3], True)
        sn(f"{p}.conv2", [b, b, 3, 3], True)
        sn(f"{p}.conv_sc", [b, a, 1, 1], True)
        if side == 64:
            q = f"blocks.{i}.1"
            sn(f"{q}.theta", [b // 8, b, 1, 1], False)
            sn(f"{q}.phi", [b // 8, b, 1, 1], False)
            sn(f"{q}.g", [b // 2, b, 1, 1], False)
            sn(f"{q}.o", [b, b // 2, 1, 1], False)
            keys[f"{q}.gamma"] = [1]
    last = outputs[-1] * CH
    keys["output_layer.0.gain"] = [last]
    keys["output_layer.0.bias"] = [last]
    keys["output_layer.0.stored_mean"] = [last]
    keys["output_layer.0.stored_var"] = [last]
    sn("output_layer.2", [3, last, 3, 3], True)
    return keys


def formula(name, t, shape):
    """Return the deterministic values of a tensor; `t` is the key's position in sorted order."""
    count = math.prod(shape)
    if name.endswith("gamma"):
        values = [0.5] * count
    elif name.endswith("stored_var"):
        values = [1.0 + 0.5 * abs(math.sin(0.7 * (i + 1) + 0.3 * t)) for i in range(count)]
    else:
        values = [0.1 * math.sin(0.7 * (i + 1) + 0.3 * t) for i in range(count)]
    return torch.tensor(values, dtype=torch.float64).to(torch.float32).reshape(shape)


def sn_weight(state, prefix):
    weight = state[prefix + ".weight"]
    matrix = weight.reshape(weight.shape[0], -1)
    u = state[prefix + ".u0"]
    v = F.normalize(u @ matrix, eps=SN_EPS)
    u = F.normalize(v @ matrix.t(), eps=SN_EPS)
    sigma = (v @ matrix.t() @ u.t()).squeeze()
    return weight / sigma


def sn_linear(state, prefix, x):
    out = x @ sn_weight(state, prefix).t()
    return out + state[prefix + ".bias"] if prefix + ".bias" in state else out


def sn_conv(state, prefix, x):
    weight = sn_weight(state, prefix)
    return F.conv2d(x, weight, state.get(prefix + ".bias"), padding=weight.shape[-1] // 2)


def ccbn(state, prefix, x, y):
    gain = (1 + sn_linear(state, prefix + ".gain", y)).view(y.shape[0], -1, 1, 1)
    bias = sn_linear(state, prefix + ".bias", y).view(y.shape[0], -1, 1, 1)
    mean, var = state[prefix + ".stored_mean"], state[prefix + ".stored_var"]
    return F.batch_norm(x, mean, var, None, None, False, 0.1, BN_EPS) * gain + bias


def attention(state, prefix, x):
    b, c, h, w = x.shape
    theta = sn_conv(state, prefix + ".theta", x).view(b, c // 8, h * w)
    phi = F.max_pool2d(sn_conv(state, prefix + ".phi", x), 2).view(b, c // 8, h * w // 4)
    g = F.max_pool2d(sn_conv(state, prefix + ".g", x), 2).view(b, c // 2, h * w // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = sn_conv(state, prefix + ".o", torch.bmm(g, beta.transpose(1, 2)).view(b, c // 2, h, w))
    return x + state[prefix + ".gamma"] * o


def generate(state, z, y):
    inputs, _ = ARCH[RESOLUTION]
    zs = torch.split(z, DIM_Z // (len(inputs) + 1), 1)
    ys = [torch.cat([y, item], 1) for item in zs[1:]]
    h = sn_linear(state, "linear", zs[0]).view(z.shape[0], -1, 4, 4)
    for i in range(len(inputs)):
        p = f"blocks.{i}.0"
        x = h
        h = F.relu(ccbn(state, p + ".bn1", h, ys[i]))
        h = F.interpolate(h, scale_factor=2)
        x = F.interpolate(x, scale_factor=2)
        h = sn_conv(state, p + ".conv1", h)
        h = sn_conv(state, p + ".conv2", F.relu(ccbn(state, p + ".bn2", h, ys[i])))
        h = h + sn_conv(state, p + ".conv_sc", x)
        if f"blocks.{i}.1.gamma" in state:
            h = attention(state, f"blocks.{i}.1", h)
    mean, var = state["output_layer.0.stored_mean"], state["output_layer.0.stored_var"]
    h = F.batch_norm(h, mean, var, state["output_layer.0.gain"], state["output_layer.0.bias"],
                     False, 0.1, BN_EPS)
    return torch.tanh(sn_conv(state, "output_layer.2", F.relu(h)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--save", help="also write the checkpoint with torch.save")
    args = parser.parse_args()
    shapes = keys_and_shapes()
    state = {name: formula(name, t, shapes[name]) for t, name in enumerate(sorted(shapes))}
    z = torch.tensor([[math.sin(0.5 * j + b) for j in range(DIM_Z)] for b in range(2)],
                     dtype=torch.float64).to(torch.float32)
    y = state["shared.weight"][[1, 3]]
    with torch.no_grad():
        images = generate(state, z, y)
    if args.save:
        torch.save(state, args.save)
    flat = images.flatten()
    print(json.dumps({
        "shape": list(images.shape),
        "sum": flat.double().sum().item(),
        "abs_sum": flat.double().abs().sum().item(),
        "first": flat[:6].tolist(),
        "last": flat[-6:].tolist(),
    }))


if __name__ == "__main__":
    main()
