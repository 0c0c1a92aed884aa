"""Convert the MobileNetV2 weights shipped in the nsfwjs npm package into a backbone state dict.

No model hub is reachable from the machines lsdseg is trained on, but npm is, and the nsfwjs
package (MIT licence) ships a Keras MobileNetV2 (width 1.0, ImageNet-pretrained, then
fine-tuned as an image classifier) as TensorFlow.js weights: 8-bit quantised per tensor, batch
norms separate. This script dequantises them, folds each batch norm into its convolution and
writes the tensors of :class:`lsdseg.backbone.MobileNetV2Features` (the classifier head and the
last 1x1 conv are dropped). It needs ``npm`` and ``node`` (to read the package's JS modules):

    npm pack nsfwjs@4.4.0 && tar xzf nsfwjs-4.4.0.tgz
    python scripts/import_backbone.py package/dist/models/mobilenet_v2 -o runs/mobilenet_v2.pt

The result seeds ``lsdseg train --grow '{"image_ae": {"backbone": "mobilenet_v2"}}'
--backbone-weights runs/mobilenet_v2.pt``; the trained backbone then travels inside the
lsdseg checkpoint, so nothing here is needed at run time.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from lsdseg.backbone import MobileNetV2Features

_DUMP = """
const dir = process.argv[1];
const model = require(dir + '/model.min.js');
const shard = require(dir + '/group1-shard1of1.min.js');
process.stdout.write(JSON.stringify({model: model, shard: shard}));
"""


def read_tfjs(folder: Path) -> tuple[dict, bytes]:
    """The model JSON (topology + weights manifest) and the weight bytes of an nsfwjs model."""
    try:
        out = subprocess.run(
            ["node", "-e", _DUMP, str(folder.resolve())], check=True, capture_output=True
        ).stdout
    except FileNotFoundError:
        sys.exit("error: node is not installed; it reads the package's JS modules")
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: could not read {folder} with node: {e.stderr.decode()[-300:]}")
    dump = json.loads(out)
    return dump["model"], base64.b64decode(dump["shard"])


def dequantise(model: dict, data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of the weights manifest as float32, in Keras layout (HWIO kernels)."""
    out, offset = {}, 0
    for w in model["weightsManifest"][0]["weights"]:
        n = int(np.prod(w["shape"]))
        q = w.get("quantization")
        if q is None:
            raw = np.frombuffer(data, np.float32, n, offset)
            offset += 4 * n
        else:
            if q["dtype"] != "uint8":
                sys.exit(f"error: {w['name']} is quantised as {q['dtype']}; only uint8 is handled")
            raw = np.frombuffer(data, np.uint8, n, offset) * q["scale"] + q["min"]
            offset += n
        out[w["name"]] = raw.astype(np.float32).reshape(w["shape"])
    if offset != len(data):
        sys.exit(f"error: the manifest covers {offset} bytes of {len(data)}: not this format")
    return out


def _batch_norm_eps(model: dict) -> dict[str, float]:
    layers = model["modelTopology"]["model_config"]["config"]["layers"]
    norms = (layer for layer in layers if layer["class_name"] == "BatchNormalization")
    return {layer["name"]: layer["config"]["epsilon"] for layer in norms}


def fold(
    weights: dict[str, np.ndarray], eps: dict[str, float], conv: str, bn: str, depthwise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight OIHW, bias) of a Keras conv followed by an inference-mode batch norm."""
    if depthwise:  # (3, 3, C, 1) -> (C, 1, 3, 3)
        k = weights[f"{conv}/depthwise_kernel"].transpose(2, 3, 0, 1)
    else:  # (kh, kw, in, out) -> (out, in, kh, kw)
        k = weights[f"{conv}/kernel"].transpose(3, 2, 0, 1)
    g, b = weights[f"{bn}/gamma"], weights[f"{bn}/beta"]
    mean, var = weights[f"{bn}/moving_mean"], weights[f"{bn}/moving_variance"]
    s = g / np.sqrt(var + eps[bn])
    return torch.from_numpy(k * s[:, None, None, None]), torch.from_numpy(b - mean * s)


def convert(folder: Path) -> dict[str, torch.Tensor]:
    """State dict of :class:`MobileNetV2Features` from an nsfwjs ``mobilenet_v2`` folder."""
    model, data = read_tfjs(folder)
    weights, eps = dequantise(model, data), _batch_norm_eps(model)
    state = {}

    def put(name: str, conv: str, bn: str, depthwise: bool = False) -> None:
        w, b = fold(weights, eps, conv, bn, depthwise)
        state[f"{name}.conv.weight"], state[f"{name}.conv.bias"] = w, b

    put("stem", "Conv1", "bn_Conv1")
    net = MobileNetV2Features()
    for i, block in enumerate(net.blocks):
        keras = "expanded_conv" if i == 0 else f"block_{i}"
        if block.expand is not None:
            put(f"blocks.{i}.expand", f"{keras}_expand", f"{keras}_expand_BN")
        put(f"blocks.{i}.depthwise", f"{keras}_depthwise", f"{keras}_depthwise_BN", True)
        put(f"blocks.{i}.project", f"{keras}_project", f"{keras}_project_BN")
    net.load_state_dict(state)  # strict: every tensor of the backbone, and no other
    return net.state_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="nsfwjs package/dist/models/mobilenet_v2")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .pt state dict")
    args = p.parse_args()
    if not (args.folder / "model.min.js").is_file():
        sys.exit(f"error: {args.folder} has no model.min.js; give nsfwjs' dist/models/mobilenet_v2")
    state = convert(args.folder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {n / 1e6:.2f} M parameters")


if __name__ == "__main__":
    main()
