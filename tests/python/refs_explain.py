"""References for tests/test_explain.cpp: the CAM family as pytorch-grad-cam (PyPI grad-cam) computes it.

A torchvision ResNet-18 with seeded weights and randomised BatchNorm statistics, a fixed input
[2, 3, 64, 64], and for every method grad-cam has under the name attnkit uses, on layer2 and layer3
(the last block of each stage, attnkit's stage names): grad-cam's own output at the layer's
resolution (its target size set to the layer's, so the resize is the identity) and the map before
its ReLU and scaling (what get_cam_image returns), with the images' top-1 classes as explicit targets.
Eigen-CAM's projections come with the sign attnkit's convention gives them (positive correlation with
the channel sum of the projected tensor), computed here from the tensor grad-cam projected: the SVD's
sign is LAPACK's choice, not part of either method. Also: aug_smooth and eigen_smooth, two layers
averaged at the input's resolution, and the second class of each image.
"""
import numpy as np
import torch

import reflib

METHODS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
LAYERS = ("layer2", "layer3")
SIZE = 64


class _ProjectionSigns:
    """Wraps grad-cam's get_2d_projection where its methods call it: records, per image, the sign
    that makes the projection correlate positively with the channel sum of what was projected."""

    def __init__(self):
        import pytorch_grad_cam.base_cam as base
        import pytorch_grad_cam.eigen_cam as eigen
        import pytorch_grad_cam.eigen_grad_cam as eigen_grad
        import pytorch_grad_cam.hirescam as hires
        import pytorch_grad_cam.layer_cam as layer
        self.modules = [base, eigen, eigen_grad, hires, layer]
        self.original = base.get_2d_projection
        self.signs = []
        for m in self.modules:
            m.get_2d_projection = self._project

    def _project(self, batch):
        out = self.original(batch)
        sums = np.asarray(batch, dtype=np.float64).sum(axis=1).reshape(len(out), -1)
        dots = (np.asarray(out, dtype=np.float64).reshape(len(out), -1) * sums).sum(axis=1)
        self.signs.append(np.where(dots < 0, -1.0, 1.0))
        return out

    def restore(self):
        for m in self.modules:
            m.get_2d_projection = self.original


def _cam(name, model, layer):
    import pytorch_grad_cam
    return getattr(pytorch_grad_cam, METHODS[name])(model=model, target_layers=[layer])


def _at_resolution(cam, side):
    """grad-cam resizes its maps to the input; make that the layer's size (cv2.resize to the same
    size is a copy) so the maps compare at the layer's resolution."""
    cam.get_target_width_height = lambda input_tensor: (side, side)
    return cam


def _stash_raw(cam):
    """The maps get_cam_image returns (before grad-cam's ReLU and scaling), in call order."""
    raw = []
    original = cam.get_cam_image

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        raw.append(np.array(out, dtype=np.float32, copy=True))
        return out

    cam.get_cam_image = wrapped
    return raw


def model_and_input():
    """The seeded torchvision ResNet-18 (eval mode) and input both reference files use."""
    import torchvision
    from refs_backbones import _randomise_bn

    torch.manual_seed(18)
    gen = torch.Generator().manual_seed(118)
    model = torchvision.models.resnet18(weights=None)
    _randomise_bn(model, gen)
    model.eval()
    return model, torch.randn(2, 3, SIZE, SIZE, generator=gen)


@reflib.reference
def explain_gradcam(out):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = model_and_input()
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1).indices
    targets = [ClassifierOutputTarget(int(c)) for c in top2[:, 0]]
    second = [ClassifierOutputTarget(int(c)) for c in top2[:, 1]]
    layers = {"layer2": (model.layer2[-1], SIZE // 8), "layer3": (model.layer3[-1], SIZE // 16)}
    refs = {**reflib.with_state("state.", model), "x": x, "logits": logits, "targets": top2[:, 0], "second": top2[:, 1]}

    signs = _ProjectionSigns()
    try:
        def run(key, name, layer, side, target_list, **kwargs):
            cam = _at_resolution(_cam(name, model, layer), side)
            raw = _stash_raw(cam)
            signs.signs.clear()
            refs[key + ".cam"] = torch.from_numpy(cam(input_tensor=x, targets=target_list, **kwargs))
            if len(raw) == 1:
                refs[key + ".raw"] = torch.from_numpy(raw[0])
            if len(signs.signs) == 1:
                refs[key + ".sign"] = torch.from_numpy(signs.signs[0])

        for name in METHODS:
            for layer_name in LAYERS:
                layer, side = layers[layer_name]
                run(f"{name}.{layer_name}", name, layer, side, targets)
        for name in ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "ablationcam"):
            layer, side = layers["layer3"]
            run(f"{name}.layer3.eigen_smooth", name, layer, side, targets, eigen_smooth=True)
        for name in ("gradcam", "layercam"):
            layer, side = layers["layer3"]
            run(f"{name}.layer3.aug_smooth", name, layer, side, targets, aug_smooth=True)
        layer, side = layers["layer3"]
        run("gradcam.layer3.second", "gradcam", layer, side, second)
    finally:
        signs.restore()

    import pytorch_grad_cam
    both = pytorch_grad_cam.GradCAM(model=model, target_layers=[model.layer2[-1], model.layer3[-1]])
    refs["gradcam.layer2+layer3.cam"] = torch.from_numpy(both(input_tensor=x, targets=targets))
    reflib.save(out, "explain_gradcam", refs)


@reflib.reference
def explain_faithfulness(out):
    """grad-cam's metrics on its own Grad-CAM maps (layer3, at the input's size) of the same model and
    input (the model's weights are in explain_gradcam.pt): the confidence change, drop and increase,
    and ROAD MoRF/LeRF per percentile with the imputation's noise off (noise=0: the one random part),
    plus one imputed image."""
    import pytorch_grad_cam
    from pytorch_grad_cam.metrics.cam_mult_image import (CamMultImageConfidenceChange, DropInConfidence,
                                                         IncreaseInConfidence)
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = model_and_input()
    with torch.no_grad():
        top1 = model(x).argmax(1)
    targets = [ClassifierOutputTarget(int(c)) for c in top1]
    cams = pytorch_grad_cam.GradCAM(model=model, target_layers=[model.layer3[-1]])(input_tensor=x, targets=targets)
    percentiles = list(range(10, 100, 10))

    def road(remove):
        return np.stack([PerturbationConfidenceMetric(remove(p, NoisyLinearImputer(noise=0)))(x, cams, targets, model)
                         for p in percentiles])

    refs = {
        "x": x, "targets": top1, "cams": torch.from_numpy(cams), "percentiles": torch.tensor(percentiles),
        "change": torch.from_numpy(CamMultImageConfidenceChange()(x, cams, targets, model)),
        "drop": torch.from_numpy(DropInConfidence()(x, cams, targets, model)),
        "increase": torch.from_numpy(IncreaseInConfidence()(x, cams, targets, model)),
        "morf": torch.from_numpy(road(RemoveMostRelevantFirst)),
        "lerf": torch.from_numpy(road(RemoveLeastRelevantFirst)),
        "imputed_morf50": RemoveMostRelevantFirst(50, NoisyLinearImputer(noise=0))(x[0], torch.from_numpy(cams[0])),
    }
    reflib.save(out, "explain_faithfulness", refs)
