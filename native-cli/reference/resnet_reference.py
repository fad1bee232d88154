"""Independent PyTorch reference for loading torchvision's ResNet-18 keys into `metairnet::model`.

It fills every tensor of torchvision's `resnet18()` state dict with a deterministic formula,
runs the network in evaluation mode (BatchNorm with running statistics) on a fixed
[2, 3, 32, 32] input, and prints a JSON summary of the [2, 512] embedding before `fc`. The
network is written with torch.nn.functional, so torchvision is not needed. The Rust test
`model::import::tests::resnet18_forward_matches_pytorch` writes a checkpoint with the same keys
and formula, loads it through `load_resnet18` and compares its output with the numbers this
script printed. `--save FILE` also writes the checkpoint with `torch.save`, with
`num_batches_tracked` as int64 as torchvision stores it.

    python3 native-cli/reference/resnet_reference.py [--save resnet18_formula.pth]
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

BLOCKS = [2, 2, 2, 2]
WIDTHS = [64, 128, 256, 512]
BN_EPS = 1e-5
BN_FIELDS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def keys_and_shapes():
    """Returns torchvision's resnet18 state-dict keys and shapes, in its order."""
    keys = [("conv1.weight", [64, 3, 7, 7])]
    keys += [(f"bn1.{field}", [] if field == "num_batches_tracked" else [64]) for field in BN_FIELDS]
    in_channels = 64
    for stage, (width, count) in enumerate(zip(WIDTHS, BLOCKS)):
        for block in range(count):
            prefix = f"layer{stage + 1}.{block}"
            keys.append((f"{prefix}.conv1.weight", [width, in_channels, 3, 3]))
            keys += bn_keys(f"{prefix}.bn1", width)
            keys.append((f"{prefix}.conv2.weight", [width, width, 3, 3]))
            keys += bn_keys(f"{prefix}.bn2", width)
            if stage > 0 and block == 0:
                keys.append((f"{prefix}.downsample.0.weight", [width, in_channels, 1, 1]))
                keys += bn_keys(f"{prefix}.downsample.1", width)
            in_channels = width
    keys += [("fc.weight", [1000, 512]), ("fc.bias", [1000])]
    return keys


def bn_keys(prefix, channels):
    return [(f"{prefix}.{field}", [] if field == "num_batches_tracked" else [channels]) for field in BN_FIELDS]


def formula(name, shape):
    """Returns the values of one tensor: a sine over the element index, phase-shifted by the
    byte sum of the key, scaled by tensor role."""
    count = int(np.prod(shape)) if shape else 1
    seed = sum(name.encode())
    s = np.sin(0.7 * np.arange(1, count + 1, dtype=np.float64) + 0.01 * seed)
    if name.endswith("num_batches_tracked"):
        values = np.full(count, 7.0)
    elif name.endswith("running_var"):
        values = 1.0 + 0.5 * np.abs(s)
    elif len(shape) == 1 and name.endswith("weight"):
        values = 0.5 + 0.2 * s
    elif len(shape) == 1:
        values = 0.1 * s
    else:
        fan_in = int(np.prod(shape[1:]))
        values = s * np.sqrt(2.0 / fan_in)
    return torch.from_numpy(values.astype(np.float32)).reshape(shape)


def batch_norm(x, state, prefix):
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        training=False,
        eps=BN_EPS,
    )


def forward(state, x):
    x = F.relu(batch_norm(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), state, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, count in enumerate(BLOCKS):
        for block in range(count):
            prefix = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if f"{prefix}.downsample.0.weight" in state:
                shortcut = F.conv2d(x, state[f"{prefix}.downsample.0.weight"], stride=stride)
                shortcut = batch_norm(shortcut, state, f"{prefix}.downsample.1")
            y = F.conv2d(x, state[f"{prefix}.conv1.weight"], stride=stride, padding=1)
            y = F.relu(batch_norm(y, state, f"{prefix}.bn1"))
            y = F.conv2d(y, state[f"{prefix}.conv2.weight"], padding=1)
            y = batch_norm(y, state, f"{prefix}.bn2")
            x = F.relu(y + shortcut)
    return x.mean(dim=(2, 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", help="also write the checkpoint to this file with torch.save")
    args = parser.parse_args()

    state = {name: formula(name, shape) for name, shape in keys_and_shapes()}
    index = np.arange(2 * 3 * 32 * 32, dtype=np.float64)
    images = torch.from_numpy(np.sin(0.37 * index).astype(np.float32)).reshape(2, 3, 32, 32)
    with torch.no_grad():
        embedding = forward(state, images).double().flatten()
    print(
        json.dumps(
            {
                "sum": embedding.sum().item(),
                "square_sum": embedding.square().sum().item(),
                "first": embedding[:6].tolist(),
                "last": embedding[-6:].tolist(),
            },
            indent=1,
        )
    )
    if args.save:
        saved = {
            name: value.long() if name.endswith("num_batches_tracked") else value
            for name, value in state.items()
        }
        torch.save(saved, args.save)


if __name__ == "__main__":
    main()
