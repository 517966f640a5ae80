"""Registry and writer shared by the reference generators (refs_*.py)."""
import os
import tempfile

import torch

GENERATORS = {}


def reference(fn):
    """Registers a generator `fn(out_dir)`; make_references.py runs them all."""
    GENERATORS[fn.__name__] = fn
    return fn


def save(out_dir, name, tensors):
    """Writes {key: tensor} as <out_dir>/<name>.pt, atomically (temp file + rename)."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    torch.save(tensors, tmp)
    os.replace(tmp, os.path.join(out_dir, name + ".pt"))


def with_state(prefix, module):
    """A module's state dict with keys prefixed, ready to merge into a reference file."""
    return {prefix + k: v for k, v in module.state_dict().items()}
