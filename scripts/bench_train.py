#!/usr/bin/env python3
"""Images/s of a plain PyTorch training loop, to compare with `attnkit train` on the same model,
batch size, threads and device.

The model is a CIFAR-style ResNet (depth 6n+2, widths 16/32/64 x width, 1x1-conv projection
shortcuts: attnkit's "resnet20" family without attention), trained with SGD-Nesterov and label
smoothing on random 1x28x28 uint8 images held on the device, with the same batched augmentation
(pad-crop, flip) as attnkit. Only throughput matters here: the data is random.

  python scripts/bench_train.py --depth 20 --width 1 --batch-size 128 --threads 2 --device cpu
  ./build/bin/attnkit train --model resnet20 --width 1 --batch-size 128 --threads 2 --device cpu \
      --epochs 1 --max-images 6000 --val-size 0 --out /tmp/bench
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    def __init__(self, depth=20, width=1.0, in_channels=1, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        widths = [round(16 * width) * m for m in (1, 2, 4)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(Block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def augment(x, pad, gen):
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    x = xp.gather(2, rows).gather(3, cols)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(3), x)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["off", "bf16"], default=None, help="default: bf16 on CUDA, off on CPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=50, help="timed steps (after 5 warm-up steps)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    amp = (a.amp or ("bf16" if a.device == "cuda" else "off")) == "bf16"
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = CifarResNet(a.depth, a.width).to(dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    data = torch.randint(0, 256, (8192, 1, 28, 28), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (8192,), device=dev)
    gen = torch.Generator().manual_seed(0)

    def step(i):
        idx = torch.randint(0, data.shape[0], (a.batch_size,), generator=gen).to(dev)
        x = augment((data[idx].float() / 255 - 0.286) / 0.353, 2, gen)
        if a.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    for i in range(5):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(i)
    loss.item()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"pytorch {torch.__version__}: resnet{a.depth} width {a.width} batch {a.batch_size} on {a.device} "
          f"({torch.get_num_threads()} threads, amp {'bf16' if amp else 'off'}): "
          f"{a.steps * a.batch_size / dt:.0f} images/s")


if __name__ == "__main__":
    main()
