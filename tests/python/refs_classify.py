"""References for `attnkit classify` (tests/cli_classify.cmake): torchvision's probabilities on an image.

The model is the torchvision ResNet-18 of refs_backbones.py (random seeded weights, randomised
BatchNorm statistics), read back from its state-dict file; the image is a 300x256 (width x height)
RGB PNG of seeded noise and shapes, written here with PIL. The expected probabilities come from
torchvision's own ImageNet pipeline on that file: Resize(256), CenterCrop(224), ToTensor,
Normalize(ImageNet mean/std), then the model and a softmax, in double precision.

The image's shorter side is exactly 256, so Resize(256) does not resample it (nor does attnkit):
what is compared is cropping, channel order, scaling, normalisation and the network, and the CLI must
match to float32 rounding. A resampled image would differ by the interpolation filters (PIL's
antialiased bilinear vs OpenCV's INTER_AREA), which is not what this test is about.
"""
import copy
import os

import torch

import reflib


def _write_image(path, width=300, height=256, seed=0):
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


@reflib.reference
def classify_tv_resnet18(out):
    import torchvision
    from PIL import Image
    from torchvision import transforms

    state_path = os.path.join(out, "backbones_tv_resnet18_state.pt")
    if not os.path.exists(state_path):  # run alone with --only
        reflib.GENERATORS["backbones_torchvision"](out)
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(state_path))
    model = copy.deepcopy(model).double().eval()

    png = os.path.join(out, "classify_tv_resnet18.png")
    _write_image(png)
    pipeline = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    x = pipeline(Image.open(png).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(model(x.double()), dim=1)[0]
    top = probs.topk(5)
    gaps = top.values[:-1] - top.values[1:]
    assert gaps.min() > 1e-5, f"top-5 probabilities too close to order robustly: {top.values.tolist()}"
    reflib.save(out, "classify_tv_resnet18", {"x": x, "probs": probs, "top_prob": top.values, "top_index": top.indices})
