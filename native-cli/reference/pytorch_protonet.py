"""PyTorch reference for the ProtoNet Conv4 episode that `metairnet bench` and `train` run.

Two commands:

  bench  times training episodes (forward, backward, Adam step) and evaluation episodes
         (forward only, BatchNorm in evaluation mode) of Conv4 or ResNet-18 on random images
         and prints one JSON object. `metairnet bench` runs it when PyTorch is installed.
  train  trains ProtoNet Conv4 on the base classes of a CUB folder with the same recipe as
         `metairnet train` (Adam with amsgrad, 5-way 1-shot 16-query, flip augmentation) and
         prints the accuracy on fixed validation episodes after every epoch. It checks whether
         a given number of episodes is enough to learn on a dataset.

The model, preprocessing and class split follow the Rust implementation: Conv3x3 (padding 1)
-> BatchNorm -> ReLU -> MaxPool2 four times with 64 channels, images resized to 96x96 and
centre-cropped to 84 with ImageNet normalisation, class folder i (sorted) is base when
i % 2 == 0, validation when i % 4 == 1 and novel when i % 4 == 3.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv4():
    layers = []
    for i in range(4):
        conv = nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1)
        # N(0, 2 / (9 * out_channels)), the Conv4 initialisation that the Rust model uses.
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (9 * 64)))
        layers += [conv, nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + shortcut)


def resnet18():
    """torchvision's ResNet-18 layout without the classifier: 512-d embeddings."""
    layers = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for block in range(2):
            layers.append(BasicBlock(channels, width, 2 if stage > 0 and block == 0 else 1))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def peak_rss_bytes():
    import resource

    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def protonet_logits(embeddings, n_way, n_shot):
    support = embeddings[: n_way * n_shot]
    queries = embeddings[n_way * n_shot :]
    prototypes = support.reshape(n_way, n_shot, -1).mean(1)
    difference = queries.unsqueeze(1) - prototypes.unsqueeze(0)
    return -(difference**2).sum(2)


def query_labels(n_way, n_query):
    return torch.arange(n_way).repeat_interleave(n_query)


def bench(args):
    torch.manual_seed(0)
    model = conv4() if args.model == "conv4" else resnet18()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8, amsgrad=True)
    count = args.n_way * (args.n_shot + args.n_query)
    images = torch.randn(count, 3, args.side, args.side)
    labels = query_labels(args.n_way, args.n_query)

    def train_episode():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        logits = protonet_logits(model(images), args.n_way, args.n_shot)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    def eval_episode():
        model.eval()
        with torch.no_grad():
            logits = protonet_logits(model(images), args.n_way, args.n_shot)
        return logits.argmax(1).tolist()

    def episodes_per_second(step, episodes):
        for _ in range(args.warmup):
            step()
        start = time.perf_counter()
        for _ in range(episodes):
            step()
        return episodes / (time.perf_counter() - start)

    result = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "images_per_episode": count,
        "train_episodes_per_second": episodes_per_second(train_episode, args.episodes),
        "eval_episodes_per_second": episodes_per_second(eval_episode, args.eval_episodes),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    print(json.dumps(result))


def load_split(data, split):
    from PIL import Image

    root = os.path.join(data, "images") if os.path.isdir(os.path.join(data, "images")) else data
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    remainder = {"base": (2, 0), "val": (4, 1), "novel": (4, 3)}[split]
    chosen = [c for i, c in enumerate(classes) if i % remainder[0] == remainder[1]]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    tensors = []
    for name in chosen:
        folder = os.path.join(root, name)
        images = []
        for file in sorted(os.listdir(folder)):
            image = Image.open(os.path.join(folder, file)).convert("RGB")
            image = image.resize((96, 96), Image.BILINEAR).crop((6, 6, 90, 90))
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            pixels = pixels.view(84, 84, 3).permute(2, 0, 1).float() / 255.0
            images.append((pixels - mean) / std)
        tensors.append(torch.stack(images))
    return tensors


def sample_episode(classes, n_way, n_shot, n_query, rng, augment):
    picked = rng.sample(range(len(classes)), n_way)
    support, query = [], []
    for c in picked:
        indices = rng.sample(range(len(classes[c])), n_shot + n_query)
        support += [classes[c][i] for i in indices[:n_shot]]
        query += [classes[c][i] for i in indices[n_shot:]]
    images = torch.stack(support + query)
    if augment:
        flips = torch.tensor([rng.random() < 0.5 for _ in range(len(images))])
        images[flips] = images[flips].flip(3)
    return images


def train(args):
    torch.manual_seed(args.seed)
    base = load_split(args.data, "base")
    val = load_split(args.data, "val")
    model = conv4()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=args.lr, eps=1e-8, amsgrad=not args.no_amsgrad
    )
    labels = query_labels(args.n_way, args.n_query)
    rng = random.Random(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses, correct = [], 0
        start = time.perf_counter()
        for _ in range(args.episodes):
            images = sample_episode(base, args.n_way, args.n_shot, args.n_query, rng, True)
            logits = protonet_logits(model(images), args.n_way, args.n_shot)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            correct += (logits.argmax(1) == labels).sum().item()
        train_seconds = time.perf_counter() - start

        model.eval()
        val_rng = random.Random(123)
        accuracies = []
        with torch.no_grad():
            for _ in range(args.val_episodes):
                images = sample_episode(val, args.n_way, args.n_shot, args.n_query, val_rng, False)
                logits = protonet_logits(model(images), args.n_way, args.n_shot)
                accuracies.append((logits.argmax(1) == labels).float().mean().item() * 100)
        mean = sum(accuracies) / len(accuracies)
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / len(accuracies))
        record = {
            "epoch": epoch,
            "train_loss": sum(losses) / len(losses),
            "train_accuracy": 100.0 * correct / (len(losses) * len(labels)),
            "val_accuracy": mean,
            "val_ci95": 1.96 * std / math.sqrt(len(accuracies)),
            "train_seconds": train_seconds,
        }
        print(json.dumps(record), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("bench", "train"):
        command = commands.add_parser(name)
        command.add_argument("--n-way", type=int, default=5)
        command.add_argument("--n-shot", type=int, default=1)
        command.add_argument("--n-query", type=int, default=16)
        command.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    bench_parser = commands.choices["bench"]
    bench_parser.add_argument("--model", choices=("conv4", "resnet18"), default="conv4")
    bench_parser.add_argument("--side", type=int, default=84, help="image side in pixels")
    bench_parser.add_argument("--episodes", type=int, default=5, help="timed training episodes")
    bench_parser.add_argument("--eval-episodes", type=int, default=10, help="timed evaluation episodes")
    bench_parser.add_argument("--warmup", type=int, default=1, help="untimed episodes first")
    train_parser = commands.choices["train"]
    train_parser.add_argument("--data", required=True, help="CUB_200_2011 folder")
    train_parser.add_argument("--epochs", type=int, default=4)
    train_parser.add_argument("--episodes", type=int, default=100, help="episodes per epoch")
    train_parser.add_argument("--val-episodes", type=int, default=50)
    train_parser.add_argument("--lr", type=float, default=1e-3)
    train_parser.add_argument("--seed", type=int, default=0)
    train_parser.add_argument("--no-amsgrad", action="store_true", help="plain Adam")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    {"bench": bench, "train": train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
